"""Launch configurations for the Triton kernels, and the autotuner that picks one per shape on the GPU.

GEMM tile candidates depend on the GEMM kind, the GPU (Hopper gets TMA + persistent variants and deep
pipelines) and the size of M (small: time embedding, M <= 64; medium: T5 / CLIP, M <= 1024; large: the
DIT). Small M gets pointer kernels only: their launches are replayed without per-call descriptor setup
(``triton_launch``), which matters more there than TMA's few percent of GPU time; medium M may also take
the Gluon kernel on sm_90 (T5's GEMMs are long enough for its descriptors to pay). The
per-token quantizer's candidates are warps per row. The first candidate of each list is the one used
without tuning. The tuner benchmarks the candidates once per key (kind, dtypes, M bucket, N, K) on the
real inputs and keeps the fastest.

Environment:
- ``LIGHTX2V_QUANT_TRITON_AUTOTUNE=0``: no benchmarking, take the first candidate (fast start).
- ``LIGHTX2V_QUANT_TRITON_TUNE_FILE=path.json``: load earlier choices and save new ones there.
- ``LIGHTX2V_QUANT_TRITON_VERBOSE=1``: print each choice with the timings of all candidates.
- ``LIGHTX2V_QUANT_TRITON_ROUTE=split|fused``: W8A8 linears take only that route (``triton_fused``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
import triton

from lightx2v_quant.quant.kernels.gluon_gemm import AVAILABLE as GLUON_GEMM
from lightx2v_quant.quant.kernels.triton_quant import INTERPRETING, cdiv, next_pow2

W8A8, FP8_BLOCK, W4A16, QUANT, LINEAR = "w8a8", "fp8-block128", "w4a16", "quant", "w8a8-linear"
KINDS = (W8A8, FP8_BLOCK, W4A16)


@dataclass(frozen=True)
class QuantConfig:
    """Launch shape of the per-token quantizer: warps per program (one row per program)."""

    num_warps: int

    def label(self) -> str:
        return f"quant w{self.num_warps}"


def default_quant_config(k: int, elem_bytes: int) -> QuantConfig:
    """About five 16-byte vectors per thread: enough loads in flight per thread, few registers."""
    vectors = cdiv(k, (16 // elem_bytes) * 32 * 5)
    return QuantConfig(min(8, next_pow2(vectors)))


def quant_candidates(k: int, elem_bytes: int) -> list[QuantConfig]:
    """The default and its neighbours (half and twice the warps)."""
    w = default_quant_config(k, elem_bytes).num_warps
    return [QuantConfig(c) for c in dict.fromkeys((w, max(1, w // 2), min(16, w * 2)))]


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    tma: bool = False  # persistent kernel with TMA descriptors (sm_90+) instead of pointer loads
    subtile: bool = False  # TMA epilogue stored as two half tiles (less shared memory)
    swap_ab: bool = False  # W4A16: compute (W A^T)^T so the unpacked W tile is the register operand
    fused: bool = False  # W8A8 linear: the one-launch kernel that quantizes its own rows (triton_fused)
    gluon: bool = False  # W8A8 per-channel on sm_90: the Gluon kernel with async int8 wgmma (gluon_gemm)

    def label(self) -> str:
        if self == SPLIT:
            return "split (quantizer + GEMM)"
        kind = "fused" if self.fused else "gluon" if self.gluon else "tma" if self.tma else "ptr"
        sub = "/sub" if self.subtile else ""
        swap = "/swap" if self.swap_ab else ""
        tile = f"{self.block_m}x{self.block_n}x{self.block_k}"
        return f"{kind} {tile} w{self.num_warps} s{self.num_stages}{sub}{swap}"

    def smem_bytes(self, a_bytes: float, b_bytes: float, out_bytes: int) -> int:
        """Estimate of the shared memory the pipeline needs, plus the TMA store staging, plus (packed
        int4 weights, b_bytes < 1) the dequantized W tile that the tensor cores read from shared memory."""
        stage = self.block_m * self.block_k * a_bytes + self.block_n * self.block_k * b_bytes
        halved = self.subtile or self.gluon  # the Gluon kernel always stores column halves
        store = self.block_m * self.block_n * out_bytes // (2 if halved else 1) if self.tma else 0
        unpacked = self.block_n * self.block_k * a_bytes if b_bytes < 1 and not (self.swap_ab or self.gluon) else 0
        return int(self.num_stages * stage + store + unpacked)


SPLIT = TileConfig(0, 0, 0, 0, 0)  # W8A8 linear route: the quantizer, then the GEMM (each tuned on its own)


def _c(
    bm: int, bn: int, bk: int, w: int, s: int, *, tma: bool = False, sub: bool = False, swap: bool = False
) -> TileConfig:
    return TileConfig(bm, bn, bk, w, s, tma=tma, subtile=sub, swap_ab=swap)


def _g(bm: int, bn: int, bk: int, w: int, s: int) -> TileConfig:
    """A Gluon tile (TMA descriptors, persistent, sm_90 only): ``s`` is the depth of its operand ring."""
    return TileConfig(bm, bn, bk, w, s, tma=True, gluon=True)


# Hopper, 1-byte operands. wgmma tiles: 8 warps = 2 warpgroups splitting BLOCK_M; fp32/int32 accumulators
# of 128x256 over 256 threads = 128 registers each. fp8 likes BLOCK_K = 128 (one 128-byte swizzled row).
_SM90_W8A8 = {
    "large": [
        _c(128, 256, 128, 8, 4, tma=True, sub=True),
        _c(128, 256, 128, 8, 3, tma=True),
        _c(256, 128, 128, 8, 3, tma=True),
        _c(256, 128, 128, 8, 4, tma=True, sub=True),
        _c(128, 256, 128, 8, 3),
        _c(128, 256, 128, 8, 4),
        _c(256, 128, 128, 8, 3),
        _c(128, 128, 128, 4, 5, tma=True),
        _c(128, 256, 64, 8, 5, tma=True, sub=True),
        _c(128, 128, 128, 8, 4),
        # Triton 3.6 waits for int8 wgmmas at the end of every K step (fp8 keeps one in flight):
        # twice the K per step halves how often the tensor cores drain.
        _c(128, 256, 256, 8, 2, tma=True, sub=True),
        # Gluon: the wgmmas stay in flight for int8 too (gluon_gemm's docstring says why).
        _g(128, 256, 128, 8, 4),
        _g(256, 128, 128, 8, 4),
        _g(128, 256, 128, 8, 3),
        _g(128, 256, 64, 8, 6),
    ],
    "medium": [
        _c(64, 128, 128, 4, 4),
        _c(128, 128, 128, 4, 4),
        _c(64, 256, 128, 4, 4),
        _c(64, 64, 128, 4, 5),
        _c(32, 128, 128, 4, 4),
        _c(128, 256, 128, 8, 3),
        # T5's 512 tokens: the Gluon kernel keeps int8 wgmmas in flight here too (one tile row per SM
        # at N = 4096, about 2.5 waves of 128-wide tiles at N = 10240)
        _g(128, 128, 128, 8, 4),
        _g(64, 256, 128, 4, 4),
        _g(128, 256, 128, 8, 3),
        _g(64, 128, 128, 4, 6),
    ],
    "small": [
        _c(16, 64, 128, 4, 4),
        _c(16, 128, 128, 4, 4),
        _c(16, 32, 256, 4, 3),
        _c(32, 64, 128, 4, 4),
        _c(64, 64, 128, 4, 4),
        _c(64, 128, 128, 4, 4),
    ],
}
# Block-128 scaling keeps two accumulators (the running sum and the K-block partial): tiles of 128x128
# per 8 warps, or 64 rows per 4 warps, keep both in registers.
_SM90_BLOCK = {
    "large": [
        _c(128, 128, 128, 8, 4, tma=True),
        _c(128, 128, 128, 8, 5, tma=True),
        _c(128, 128, 128, 8, 4),
        _c(128, 128, 128, 8, 3),
        _c(64, 128, 128, 4, 5, tma=True),
        _c(64, 128, 128, 4, 4),
    ],
    "medium": [
        _c(64, 128, 128, 4, 4),
        _c(128, 128, 128, 8, 4),
        _c(64, 64, 128, 4, 4),
        _c(32, 128, 128, 4, 4),
    ],
    "small": [_c(16, 64, 128, 4, 4), _c(16, 128, 128, 4, 4), _c(32, 64, 128, 4, 4), _c(64, 64, 128, 4, 4)],
}
# W4A16: the W tile is unpacked and scaled in registers each K-step. swap_ab computes (W A^T)^T: the
# unpacked tile is then wgmma's register operand (no shared-memory round trip, the MMA stays in flight),
# W rows are wgmma's M (64 per warpgroup) and tokens its N (16..256), which also suits small M.
# BLOCK_K divides 128 (one group scale per tile row).
_SM90_W4A16 = {
    "large": [
        # Gluon (gluon_w4a16): tokens x 128 weight rows, warp-specialized, the unpacked W in registers
        _g(256, 128, 64, 4, 4),
        _g(256, 128, 64, 4, 5),
        _g(128, 128, 64, 4, 6),
        _c(128, 128, 64, 8, 4, swap=True),
        _c(256, 128, 64, 8, 3, swap=True),
        _c(256, 128, 64, 8, 4, swap=True),
        _c(128, 256, 64, 8, 3, swap=True),
        _c(128, 128, 128, 8, 3, swap=True),
        _c(128, 128, 64, 8, 4),
        _c(256, 128, 64, 8, 3),
    ],
    "medium": [
        _g(128, 128, 64, 4, 6),
        _g(64, 128, 64, 4, 8),
        _g(256, 128, 64, 4, 4),
        _c(64, 128, 64, 4, 4, swap=True),
        _c(128, 128, 64, 8, 4, swap=True),
        _c(64, 256, 64, 8, 4, swap=True),
        _c(64, 128, 128, 4, 4, swap=True),
        _c(32, 128, 128, 4, 4, swap=True),
        _c(64, 128, 64, 4, 4),
    ],
    "small": [
        _c(16, 64, 128, 4, 4, swap=True),
        _c(16, 128, 128, 4, 4, swap=True),
        _c(32, 64, 128, 4, 4, swap=True),
        _c(16, 64, 64, 4, 4, swap=True),
        _c(16, 32, 128, 4, 4),
    ],
}
# Ampere / Ada: pointer kernel only, shallower pipelines (99-163 KB of shared memory).
_OTHER = {
    "large": [
        _c(128, 256, 64, 8, 3),
        _c(256, 128, 64, 8, 3),
        _c(128, 128, 64, 4, 4),
        _c(128, 128, 128, 8, 3),
        _c(64, 128, 64, 4, 4),
    ],
    "medium": [_c(64, 128, 64, 4, 4), _c(128, 128, 64, 4, 3), _c(64, 64, 128, 4, 3), _c(32, 128, 64, 4, 4)],
    "small": [_c(16, 64, 128, 4, 3), _c(16, 128, 64, 4, 4), _c(32, 64, 64, 4, 4)],
}
# Block scaling and int4 unpacking hold more registers per thread: smaller tiles per warp (no spills).
_OTHER_HEAVY = {
    "large": [_c(128, 128, 64, 8, 3), _c(64, 128, 64, 4, 4), _c(128, 64, 64, 4, 4), _c(64, 256, 64, 8, 3)],
    "medium": [_c(64, 128, 64, 4, 4), _c(32, 128, 64, 4, 4), _c(64, 64, 128, 4, 3)],
    "small": _OTHER["small"],
}
_TABLES = {W8A8: _SM90_W8A8, FP8_BLOCK: _SM90_BLOCK, W4A16: _SM90_W4A16}
_OTHER_TABLES = {W8A8: _OTHER, FP8_BLOCK: _OTHER_HEAVY, W4A16: _OTHER_HEAVY}

INTERPRETER_CONFIG = _c(32, 32, 64, 4, 2)  # small tiles keep the CPU interpreter quick


def m_class(m: int) -> str:
    return "small" if m <= 64 else "medium" if m <= 1024 else "large"


def m_bucket(m: int) -> int:
    """Shapes whose M rounds to the same power of two share one tuning result."""
    return max(16, next_pow2(m))


def candidates(kind: str, m: int, sm: int, max_smem: int, a_bytes: float, out_bytes: int) -> list[TileConfig]:
    """Tile configs worth trying for this GEMM on this GPU, best guess first."""
    cls = m_class(m)
    if sm >= 90:
        table = _TABLES[kind][cls]
    else:
        table = _OTHER_TABLES[kind][cls]
        if kind == W4A16:  # BLOCK_K must divide 128; no wgmma register operand to gain from swapping
            table = [replace(c, block_k=min(c.block_k, 128), swap_ab=False) for c in table]
    b_bytes = 0.5 if kind == W4A16 else 1.0
    row_cap = m_bucket(m)
    if sm != 90 or not GLUON_GEMM:  # wgmma is sm_90 only; the Gluon kernel needs a Triton with Gluon
        table = [c for c in table if not c.gluon]
    out = [c for c in table if c.block_m <= row_cap and c.smem_bytes(a_bytes, b_bytes, out_bytes) <= max_smem]
    if not out:  # every candidate too big for this GPU: shrink the first one until it fits
        c = table[0]
        while c.smem_bytes(a_bytes, b_bytes, out_bytes) > max_smem and c.num_stages > 2:
            c = replace(c, num_stages=c.num_stages - 1)
        out = [replace(c, block_m=min(c.block_m, row_cap), tma=False, subtile=False)]
    return list(dict.fromkeys(out))


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value not in ("0", "false", "False", "")


def _compile_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean 'this config does not build here' (skipped), as opposed to a broken run."""
    from triton.errors import TritonError

    return (TritonError,)


class Tuner:
    """Picks one TileConfig per GEMM key by timing each candidate; remembers the choice per process."""

    def __init__(self) -> None:
        self.best: dict[tuple, TileConfig] = {}
        self.records: dict[tuple, dict] = {}  # key -> chosen label, timings (ms) and failures, for reports
        self._lock = threading.RLock()  # re-entered: tuning a linear route tunes its kernels
        self._saved: dict | None = None  # choices read from LIGHTX2V_QUANT_TRITON_TUNE_FILE

    # -- persistence ------------------------------------------------------------------------------
    @staticmethod
    def _file_key(key: tuple) -> str:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        return f"{device}|triton-{triton.__version__}|{'|'.join(map(str, key))}"

    def _saved_choices(self) -> dict:
        if self._saved is None:
            path = os.environ.get("LIGHTX2V_QUANT_TRITON_TUNE_FILE")
            self._saved = {}
            if path and os.path.exists(path):
                with open(path) as f:
                    self._saved = json.load(f)
        return self._saved

    def _save(self, key: tuple, cfg, ms: float) -> None:
        path = os.environ.get("LIGHTX2V_QUANT_TRITON_TUNE_FILE")
        saved = self._saved_choices()
        saved[self._file_key(key)] = {"config": asdict(cfg), "ms": ms}
        if path:
            with open(path, "w") as f:
                json.dump(saved, f, indent=1, sort_keys=True)

    # -- choosing ---------------------------------------------------------------------------------
    def choose(
        self,
        key: tuple,
        cands: list,
        launch: Callable[[object, bool], object],
        after_tuning: Callable[[], object] | None = None,
        cls: type = TileConfig,
    ):
        """The config for ``key`` (a ``cls``). ``launch(cfg, warmup)`` runs (or, warmup=True, only
        compiles) the kernel; ``after_tuning`` runs once benchmarking has scribbled over the output (to
        re-poison it in tests)."""
        cfg = self.best.get(key)
        if cfg is not None:
            return cfg
        with self._lock:
            if key in self.best:
                return self.best[key]
            entry = self._saved_choices().get(self._file_key(key))
            cfg = cls(**entry["config"]) if entry else None
            if cfg is not None:
                self.records[key] = {"config": cfg.label(), "tuned": False, "from_file": True}
            else:
                if INTERPRETING or len(cands) == 1 or not _env_flag("LIGHTX2V_QUANT_TRITON_AUTOTUNE", True):
                    cfg = cands[0]
                    self.records[key] = {"config": cfg.label(), "tuned": False}
                else:
                    cfg = self._benchmark(key, cands, launch)
                    if after_tuning is not None:
                        after_tuning()
            self.best[key] = cfg
        return cfg

    def _benchmark(self, key: tuple, cands: list, launch: Callable[[object, bool], object]):
        _precompile(cands, launch)
        timings: dict = {}
        failed: dict[str, str] = {}
        for cfg in cands:
            try:
                launch(cfg, False)
                timings[cfg] = _time(launch, cfg)
            except _compile_errors() as exc:
                failed[cfg.label()] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if not timings:
            reasons = "; ".join(f"{k}: {v}" for k, v in failed.items())
            raise RuntimeError(f"no Triton config compiled for {key}: {reasons}")
        # The GPU clocks down as it heats up, which favours whatever ran first: time the three best
        # again in reverse order and keep each one's better time.
        first_round = dict(timings)
        for cfg in sorted(timings, key=timings.__getitem__)[:3][::-1]:
            timings[cfg] = min(timings[cfg], _time(launch, cfg))
        best = min(timings, key=timings.__getitem__)
        self.records[key] = {
            "config": best.label(),
            "tuned": True,
            "ms": timings[best],
            "timings_ms": {c.label(): t for c, t in sorted(timings.items(), key=lambda kv: kv[1])},
            "first_round_ms": {c.label(): t for c, t in first_round.items()},
            "failed": failed,
        }
        if _env_flag("LIGHTX2V_QUANT_TRITON_VERBOSE", False):
            print(
                f"[triton tune] {key}: {best.label()} {timings[best]:.4f} ms "
                f"(of {len(timings)}; failed {len(failed)})",
                file=sys.stderr,
            )
        self._save(key, best, timings[best])
        return best


def _time(launch: Callable[[object, bool], object], cfg) -> float:
    return triton.testing.do_bench(lambda: launch(cfg, False), warmup=10, rep=40, return_mode="median")


def _precompile(cands: list, launch: Callable[[object, bool], object]) -> None:
    """Compile all candidates in parallel threads (Triton's async compile mode) when this Triton has it.

    Only a speed-up of the first tuning: any failure here is ignored and the sequential loop that follows
    compiles (and reports) whatever is missing.
    """
    if not _env_flag("LIGHTX2V_QUANT_TRITON_PARALLEL_COMPILE", True):
        return
    try:
        from concurrent.futures import ThreadPoolExecutor

        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:
        return
    workers = max(1, min(len(cands), os.cpu_count() or 1))
    try:
        with ThreadPoolExecutor(workers) as pool, AsyncCompileMode(pool, ignore_errors=True):
            for cfg in cands:
                try:
                    launch(cfg, True)
                except Exception:  # noqa: BLE001 - best effort, see docstring
                    pass
    except Exception:  # noqa: BLE001
        pass


TUNER = Tuner()
