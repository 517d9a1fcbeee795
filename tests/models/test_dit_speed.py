"""DIT speed options: attention backend registry and selection, launch validation, the fused path against
the official path, and torch.compile of the blocks (CPU: no graph break; GPU: inductor)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import lightx2v_quant.config  # noqa: F401  (registers the schema)
from lightx2v_quant.hardware import HardwareSpec
from lightx2v_quant.models.wan import random_dit
from lightx2v_quant.models.wan.attention import attention, backend_problem, backends
from lightx2v_quant.models.wan.dit_fused import TOKEN_CHUNK, default_token_chunk
from lightx2v_quant.models.wan.speed import compile_blocks, configure_dit, speed_settings
from lightx2v_quant.quant.apply import prepare_model
from lightx2v_quant.validate import ConfigError, validate
from tests.interp_util import run_cases
from tests.models.dit_util import inputs, tiny

ROOT = Path(__file__).resolve().parents[2]
H100 = HardwareSpec("NVIDIA H100 80GB HBM3", "cuda", (9, 0), 85.0)
CPU = HardwareSpec("cpu", "cpu", None, 24.0)


def _cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("config", overrides=list(overrides))


def test_backends_registered_with_reasons():
    assert {"sdpa", "flash_attn2", "flash_attn3", "sage_attn2", "int8qk-fp8pv", "int8qk"} <= set(backends())
    assert backend_problem("sdpa", "cpu") is None
    assert "CUDA GPUs only" in backend_problem("int8qk-fp8pv", "cpu")
    assert "sm_89" in backend_problem("int8qk-fp8pv", "cuda", 80)
    assert backend_problem("int8qk", "cuda", 80) is None  # int8 Q.K + bf16 P.V: Ampere is enough
    assert "sm_90..sm_90" in backend_problem("flash_attn3", "cuda", 89)
    assert "unknown attention backend" in backend_problem("nope", "cuda", 90)
    if backend_problem("sage_attn2", "cuda", 90):  # not installed here: the error names the package
        assert "sageattention" in backend_problem("sage_attn2", "cuda", 90)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(*(torch.randn(1, 4, 2, 8),) * 3, backend="nope")


def test_speed_settings_resolve_defaults():
    s = speed_settings(_cfg("hardware=h100"))
    assert (s.attention, s.cross_attention, s.fused, s.compile) == ("sdpa", "sdpa", None, False)
    s = speed_settings(_cfg("hardware=h100", "speed.attention=int8qk-fp8pv", "speed.compile=true"))
    assert (s.attention, s.cross_attention, s.compile) == ("int8qk-fp8pv", "int8qk-fp8pv", True)
    s = speed_settings(_cfg("speed.attention=int8qk", "speed.cross_attention=sdpa"))
    assert (s.attention, s.cross_attention) == ("int8qk", "sdpa")


def test_validation_rejects_backends_that_cannot_run():
    validate(_cfg("hardware=h100", "speed.attention=int8qk-fp8pv"), detected=H100)
    with pytest.raises(ConfigError) as err:
        validate(_cfg("hardware=cpu", "speed.attention=int8qk-fp8pv", "dit_quant=none"), detected=CPU)
    assert "speed.attention=int8qk-fp8pv" in str(err.value) and "Backends that run here: sdpa" in str(
        err.value
    )
    with pytest.raises(ConfigError, match="speed.fused=true"):
        validate(_cfg("hardware=cpu", "speed.fused=true", "dit_quant=none"), detected=CPU)
    with pytest.raises(ConfigError, match="speed.residual=bf32"):
        validate(_cfg("hardware=cpu", "speed.residual=bf32", "dit_quant=none"), detected=CPU)
    with pytest.raises(ConfigError, match="speed.token_chunk=-1"):
        validate(_cfg("hardware=cpu", "speed.token_chunk=-1", "dit_quant=none"), detected=CPU)
    validate(_cfg("hardware=cpu", "speed.token_chunk=0", "dit_quant=none"), detected=CPU)
    with pytest.raises(ConfigError, match="hardware.attention=nope"):
        validate(_cfg("hardware=h100", "hardware.attention=nope"), detected=H100)
    if backend_problem("flash_attn3", "cuda", 90):
        with pytest.raises(ConfigError, match="flash_attn_interface"):
            validate(_cfg("hardware=h100", "speed.attention=flash_attn3"), detected=H100)


@pytest.mark.parametrize("scheme", ["int8-torch", "fp8-torch"])
def test_torch_kernel_takes_prequantized_activations(scheme):
    from tests.models.dit_speed_cases import prequant_linear

    assert prequant_linear("cpu", scheme) < 1e-3


def test_configure_dit_on_cpu_keeps_official_path():
    model = random_dit(tiny(num_layers=2), torch.float32, "cpu", seed=0, quant="int8-torch")
    prepare_model(model)
    if os.environ.get("TRITON_INTERPRET") != "1":
        rep = configure_dit(model, attention="sdpa", cross_attention="sdpa")
        assert rep["fused"] is False and "CUDA" in rep["fused_off_because"]
        with pytest.raises(ValueError, match="fused=True"):
            configure_dit(model, fused=True)
    with pytest.raises(ValueError, match="CUDA GPUs only"):
        configure_dit(model, attention="int8qk-fp8pv")
    with pytest.raises(ValueError, match="token_chunk=-3"):
        configure_dit(model, token_chunk=-3)
    assert all(not b.fused and b.ffn.gelu_quant is None for b in model.blocks)
    # token_chunk=None: 128 tokens per SM on a GPU, TOKEN_CHUNK elsewhere; the report gives the number used
    assert configure_dit(model)["token_chunk"] == TOKEN_CHUNK == default_token_chunk("cpu")
    assert all(b.token_chunk == TOKEN_CHUNK for b in model.blocks)
    assert configure_dit(model, token_chunk=0)["token_chunk"] == 0


@pytest.mark.gpu
def test_default_token_chunk_fills_whole_gemm_waves():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    assert default_token_chunk("cuda") == 128 * sms  # 132 row tiles of 128 on an H100: whole waves


def test_fused_path_matches_official_in_triton_interpreter():
    res = run_cases(Path(__file__).with_name("dit_speed_cases.py"))
    assert res["none:fused"] < 2e-3 and res["none:fused_unchunked"] < 2e-3, res  # fp16 rounding ties only
    assert res["none:fused_residual16"] < 2e-3, res
    assert 0 < res["none:residual16_vs_fp32"] < 2e-2, res  # speed.residual=run_dtype: a small, real change
    assert res["int8:fused"] < 2e-2 and res["int8:fused_prequant"] < 2e-2, res  # int8 flips from those ties
    assert res["int8-triton:prequant_linear"] < 1e-3, res  # the triton kernel's pre-quantized entry
    assert res["offload:fused_phase"] == 0.0, res  # phase offload sees the fused path's weight reads
    # the FFN's fused GELU + quantization: on where the down projection takes per-token fp8 / int8 input
    for scheme in ("fp8-torch", "int8-torch"):
        assert res[f"{scheme}:ffn_hidden_blocks"] == 2 and res[f"{scheme}:gelu_fusion"] < 1e-3, res
    assert res["int4-g128-torch:ffn_hidden_blocks"] == 0, res


@pytest.mark.parametrize("quant", ["int8-torch", "fp8-torch"])
def test_compiled_blocks_have_no_graph_break_on_cpu(quant):
    """fullgraph=True raises on a graph break; aot_eager traces like inductor without compiling C++."""
    cfg = tiny(num_layers=2)
    model = random_dit(cfg, torch.float32, "cpu", seed=0, quant=quant)
    prepare_model(model)
    inp = inputs(cfg, batch=1)
    with torch.no_grad():
        ref = model(**inp)
        compile_blocks(model, backend="aot_eager")
        out = model(**inp)
    torch._dynamo.reset()
    assert (out - ref).norm() / ref.norm() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("quant", [None, "fp8-torch", "int8-torch", "fp8-triton", "int8-triton"])
def test_fused_path_matches_official_cuda(quant):
    from tests.models.dit_speed_cases import fused_vs_official

    res = fused_vs_official("cuda", torch.bfloat16, quant)
    assert res["fused"] < 2e-2 and res["fused_unchunked"] < 2e-2, res
    if quant:
        assert res["fused_prequant"] < 3e-2, res


@pytest.mark.gpu
@pytest.mark.parametrize("quant", ["fp8-torch", "int8-torch", "fp8-triton", "int8-triton"])
def test_fused_gelu_quant_in_dit_cuda(quant):
    """The FFN's GELU + quantization kernel vs nn.GELU + the down projection's own quantization. On CUDA
    the DIT's kernel uses the approximate tanh: ~0.1% of the quantized codes move by one step
    (tests/fused/test_gelu.py), so the outputs differ slightly (and triton may tune another tile config).
    One fp8 step is 2^-4 to 2^-3 of a value, so 0.1% of codes moving gives a relative difference of
    about sqrt(1e-3) * 2^-4 = 2e-3 (fp8 runs landed on both sides of that); int8 steps are far finer."""
    from tests.models.dit_speed_cases import gelu_fusion

    res = gelu_fusion("cuda", torch.bfloat16, quant)
    assert res["ffn_hidden_blocks"] == 2, res
    assert res["gelu_fusion"] <= (4e-3 if quant.startswith("fp8") else 2e-3), res


@pytest.mark.gpu
@pytest.mark.parametrize("quant", ["fp8-torch", "fp8-triton"])
def test_compiled_fused_dit_with_lowp_attention_cuda(quant):
    """Inductor, fullgraph (a graph break raises), fused kernels + pre-quantized inputs + our attention."""
    from tests.models.dit_speed_cases import rel

    cfg = tiny(num_layers=2, dim=512, num_heads=4)
    model = random_dit(cfg, torch.bfloat16, "cuda", seed=0, quant=quant)
    prepare_model(model)
    inp = {
        k: (v.cuda() if torch.is_tensor(v) else v)
        for k, v in inputs(cfg, batch=1, latent=(4, 16, 16)).items()
    }
    with torch.no_grad():
        configure_dit(model, fused=False)
        ref = model(**inp)
        rep = configure_dit(
            model, attention="int8qk-fp8pv", cross_attention="sdpa", fused=True, compile=True, fuse_gelu=True
        )
        out = model(**inp)
    torch._dynamo.reset()
    assert rep["prequantized_inputs"]["self_attn"] == "2/2 blocks", rep
    assert rep["prequantized_inputs"]["ffn_hidden"] == "2/2 blocks", rep  # the GELU + quant op, compiled
    assert torch.isfinite(out).all() and rel(out, ref) < 0.1, rel(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["int8qk-fp8pv", "int8qk"])
def test_fused_lowp_cross_attention_cuda(backend):
    """Cross-attention on the fast path with our attention: q's RMSNorm and int8 quantization in one pass
    give the same bytes as normalizing q in place and quantizing it inside the attention (text and image
    keys, two samples)."""
    from lightx2v_quant.models.wan import dit_fused
    from lightx2v_quant.models.wan.attention import split_heads

    cfg = tiny(i2v=True, dim=512, num_heads=4)
    ca = random_dit(cfg, torch.bfloat16, "cuda", seed=0).blocks[0].cross_attn
    assert ca.has_image
    g = torch.Generator("cuda").manual_seed(0)
    x, ctx, ci = (torch.randn(2, n, 512, device="cuda", generator=g, dtype=torch.bfloat16) for n in (300, 77, 257))
    ca.attention_backend, ca.fused = backend, True
    with torch.no_grad():
        out = ca.attend_all(x, ctx, ci)
        q = split_heads(dit_fused.cross_q_norm(ca, ca.q(x)), ca.num_heads)
        ref = ca._attend(q, ca.norm_k(ca.k(ctx)), ca.v(ctx)).float()
        ref = (ref + ca._attend(q, ca.norm_k_img(ca.k_img(ci)), ca.v_img(ci)).float()).to(torch.bfloat16)
    assert out.shape == ref.shape and torch.equal(out, ref)


@pytest.mark.gpu
def test_fused_path_with_phase_offload_cuda():
    """Phase offload brings each phase's weights to the GPU when one of its modules starts: the fused path
    must read weights only inside those modules' forwards (norm3 included)."""
    from lightx2v_quant.config import OffloadConfig
    from lightx2v_quant.offload.manager import wrap_for_offload
    from tests.models.dit_speed_cases import rel

    cfg = tiny(num_layers=3)
    model = random_dit(cfg, torch.bfloat16, "cpu", seed=0, quant="fp8-torch")
    ref_model = copy.deepcopy(model).cuda()  # random_dit's weights depend on the device: copy, don't redraw
    prepare_model(ref_model)
    inp = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in inputs(cfg, batch=1).items()}
    with torch.no_grad():
        configure_dit(ref_model, fused=True)
        expected = ref_model(**inp)
        configure_dit(model, fused=True, device="cuda")
        handle = wrap_for_offload(model, OffloadConfig(mode="phase", granularity="phase"), "cuda")
        with handle:
            out = model(**inp)
        handle.close()
    assert rel(out, expected) < 1e-3
