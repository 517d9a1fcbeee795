"""Launch-time validation: check a composed config against this machine before any weight is loaded.

One ``ConfigError`` lists every problem, why, and what would run here instead. Nothing falls back
silently: a kernel is substituted only when ``quant.fallback=native`` asks for it, and the plan
records the substitution so that the run's report can say which kernel actually ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightx2v_quant import hardware as hwmod
from lightx2v_quant.hardware import HardwareSpec
from lightx2v_quant.quant.kernels import get_kernel
from lightx2v_quant.quant.schemes import AUTO, NONE, OPTION_NAMES, Scheme, get_scheme, schemes_for_format

COMPONENTS = {"dit": "dit_quant", "t5": "t5_quant", "clip": "clip_quant"}
FALLBACKS = ("none", "native")
OFFLOAD_MODES = ("none", "model", "block", "phase", "disk", "auto")


class ConfigError(ValueError):
    """A configuration that cannot run here; the message lists every problem and the alternatives."""

    def __init__(self, problems: list[str], context: str = "") -> None:
        self.problems = problems
        head = "This configuration cannot run" + (f" ({context})" if context else "") + ":"
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]))


@dataclass
class ComponentPlan:
    """What one component will run: the scheme asked for and the kernel that will actually run it."""

    component: str  # dit | t5 | clip
    requested: str  # the option as written: a scheme name, "none" or "auto"
    scheme: Scheme | None  # None: not quantized
    kernel: str | None
    note: str = ""  # how auto chose, or why a fallback happened

    @property
    def label(self) -> str:
        if self.scheme is None:
            return "none (unquantized)"
        return f"{self.scheme.name} via {self.kernel}"


@dataclass
class Plan:
    hardware: HardwareSpec  # what we run on
    detected: HardwareSpec
    components: dict[str, ComponentPlan]
    notes: list[str] = field(default_factory=list)
    offload: Any = None  # offload.memory.OffloadPlan: the mode that runs (auto resolved) and the estimates

    def summary(self) -> dict[str, Any]:
        return {
            "hardware": self.hardware.label(),
            "components": {c: {"requested": p.requested, "runs": p.label, "note": p.note}
                           for c, p in self.components.items()},
            "notes": self.notes,
            "offload": self.offload.summary() if self.offload is not None else None,
        }


def components_in_use(cfg: Any) -> list[str]:
    """The components the task runs: the DIT and T5 always, CLIP for image-conditioned Wan2.1 models."""
    used = ["dit", "t5"]
    if cfg.model.task == "i2v" and cfg.model.dit.get("image_dim"):
        used.append("clip")
    return used


def linear_shapes(cfg: Any, component: str) -> set[tuple[int, int]]:
    """(out_features, in_features) of the quantizable linears of a component, from the model config."""
    if component == "dit":
        d, f = cfg.model.dit.dim, cfg.model.dit.ffn_dim
        return {(d, d), (f, d), (d, f)}
    if component == "t5" and cfg.model.get("t5") is not None:
        from lightx2v_quant.models.wan.t5 import T5Config

        return T5Config.from_mapping(cfg.model.t5).linear_shapes()
    if component == "clip" and cfg.model.get("clip") is not None:
        from lightx2v_quant.models.wan.clip import ClipConfig

        return ClipConfig.from_mapping(cfg.model.clip).linear_shapes()
    return set()


def choose_auto(hw: HardwareSpec) -> tuple[Scheme | None, str]:
    """The best scheme that runs on ``hw``: fp8 on sm_89+, else int8; the first available kernel."""
    if hw.is_cuda and hw.sm >= 89:
        prefs = ["w8a8-fp8-channel", "w8a8-int8-channel"]
    else:
        prefs = ["w8a8-int8-channel", "w8a8-fp8-channel"]  # int8 is the fast path on CPUs (oneDNN)
    for fmt in prefs:
        for scheme in schemes_for_format(fmt):
            if not hw.is_cuda and not scheme.native:
                continue  # on a CPU the libraries add nothing over PyTorch's own ops
            ok, _ = get_kernel(scheme.kernel).availability(fmt, hw)
            if ok:
                return scheme, f"auto chose {scheme.name} for {hw.label()}"
    return None, f"auto found no quantized scheme that runs on {hw.label()}; running unquantized"


def runnable_alternatives(fmt: str, hw: HardwareSpec, exclude: str = "") -> list[str]:
    return [s.name for s in schemes_for_format(fmt)
            if s.name != exclude and get_kernel(s.kernel).availability(fmt, hw)[0]]


def _native_for(fmt: str, hw: HardwareSpec) -> Scheme | None:
    for s in schemes_for_format(fmt):
        if s.native and get_kernel(s.kernel).availability(fmt, hw)[0]:
            return s
    return None


def _plan_component(cfg: Any, component: str, hw: HardwareSpec, problems: list[str]) -> ComponentPlan:
    group = COMPONENTS[component]
    qcfg = cfg[group]
    requested = str(qcfg.scheme)
    if requested == NONE:
        return ComponentPlan(component, requested, None, None)
    if requested == AUTO:
        scheme, note = choose_auto(hw)
        return ComponentPlan(component, requested, scheme, scheme.kernel if scheme else None, note)
    if requested not in OPTION_NAMES:
        problems.append(f"{group}.scheme={requested}: {get_scheme_error(requested)}")
        return ComponentPlan(component, requested, None, None)
    scheme = get_scheme(requested)
    for key in ("format", "kernel"):
        given = qcfg.get(key)
        if given is not None and given != getattr(scheme, key):
            problems.append(
                f"{group}.{key}={given} does not match scheme {scheme.name} ({key} {getattr(scheme, key)}); "
                f"choose the scheme by name, e.g. {group}=<format>-<kernel>"
            )
    kernel = get_kernel(scheme.kernel)
    ok, why = kernel.availability(scheme.format, hw)
    shape_issues = sorted({p for n, k in linear_shapes(cfg, component)
                           if (p := kernel.shape_problem(scheme.fmt, n, k))})
    if ok and not shape_issues:
        return ComponentPlan(component, requested, scheme, scheme.kernel)
    why = "; ".join([w for w in [why, *shape_issues] if w])
    if cfg.quant.fallback == "native":
        native = _native_for(scheme.format, hw)
        if native is not None and native.name != scheme.name:
            note = f"quant.fallback=native: {scheme.name} cannot run here ({why}); running {native.kernel} kernel"
            return ComponentPlan(component, requested, scheme, native.kernel, note)
    alternatives = runnable_alternatives(scheme.format, hw, exclude=scheme.name)
    alt = (f"runnable here for {scheme.format}: {', '.join(alternatives)}" if alternatives
           else f"no scheme for {scheme.format} runs on {hw.label()}")
    hint = " (or add quant.fallback=native)" if _native_for(scheme.format, hw) else ""
    problems.append(f"{group}={scheme.name}: {why}. {alt[0].upper() + alt[1:]}{hint}")
    return ComponentPlan(component, requested, scheme, None)


def get_scheme_error(name: str) -> str:
    try:
        get_scheme(name)
    except KeyError as exc:
        return str(exc)
    return ""


def resolve_hardware(cfg: Any, detected: HardwareSpec, problems: list[str]) -> HardwareSpec:
    name = str(cfg.hardware.name)
    if name == "auto":
        return detected
    named = hwmod.from_config(cfg.hardware)
    problem = hwmod.mismatch(named, detected)
    if problem:
        problems.append(problem)
        return detected
    if not named.is_cuda:
        return named  # hardware=cpu: run on the CPU even where a GPU exists
    return HardwareSpec(named.name, "cuda", detected.compute_capability, detected.memory_gb,
                        f"{named.description} (detected {detected.name})")


def _speed_problems(cfg: Any, hw: HardwareSpec) -> list[str]:
    """Attention backends (speed.attention / hardware.attention) and speed.fused against this machine."""
    from lightx2v_quant.models.wan.speed import speed_problems

    return speed_problems(cfg, hw.device, hw.sm if hw.is_cuda else None)


def validate(cfg: Any, detected: HardwareSpec | None = None) -> Plan:
    """Check ``cfg`` against the machine; return the plan or raise one ConfigError with every problem."""
    detected = detected or hwmod.detect()
    problems: list[str] = []
    hw = resolve_hardware(cfg, detected, problems)
    if cfg.quant.fallback not in FALLBACKS:
        problems.append(f"quant.fallback={cfg.quant.fallback}: expected one of {', '.join(FALLBACKS)}")
    if cfg.offload.mode not in OFFLOAD_MODES:
        problems.append(f"offload.mode={cfg.offload.mode}: expected one of {', '.join(OFFLOAD_MODES)}")
    elif cfg.offload.mode not in ("none", "auto") and not hw.is_cuda:
        problems.append(f"offload={cfg.offload.mode} moves weights to a CUDA GPU; {hw.label()} has none: use offload=none")
    problems += _speed_problems(cfg, hw)
    used = components_in_use(cfg)
    plans = {c: _plan_component(cfg, c, hw, problems) for c in used}
    from lightx2v_quant.pipeline_checks import pipeline_problems  # sampler, sizes, image, offload, attention

    problems.extend(pipeline_problems(cfg))
    offload = check_offload(cfg, hw, plans, problems) if cfg.offload.mode in OFFLOAD_MODES else None
    notes = [p.note for p in plans.values() if p.note]
    if offload is not None and offload.requested == "auto":
        notes.append(offload.note)
    unused = [COMPONENTS[c] for c in COMPONENTS if c not in used and cfg[COMPONENTS[c]].scheme != NONE]
    if unused:
        notes.append(f"{', '.join(unused)} set but not used by task {cfg.model.task} of model {cfg.model.name}")
    if problems:
        raise ConfigError(problems, context=f"this machine: {detected.label()}")
    return Plan(hardware=hw, detected=detected, components=plans, notes=notes, offload=offload)


def check_offload(cfg: Any, hw: HardwareSpec, plans: dict[str, ComponentPlan], problems: list[str]) -> Any:
    """Memory estimate of the chosen offload mode (or auto's choice); see lightx2v_quant.offload.memory."""
    from lightx2v_quant.offload.memory import plan_offload

    return plan_offload(cfg, hw, {c: p.scheme for c, p in plans.items()}, problems)
