"""How a model splits into offload units: the non-block part, and per block either one unit or one per phase.

The contract is generic: ``model.blocks`` is an ``nn.ModuleList`` run in order by the model's forward; a
phase is a tuple of names of a block's children (submodules) or of its own tensors. A unit becomes current
when its trigger module's forward starts (the block for a block unit and for a block's first phase, the
phase's first-called submodule for the others).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lightx2v_quant.offload.layout import TensorRef, module_refs

# Wan blocks: (modulation + self-attention), (norm3 + cross-attention), (FFN). The block's forward reads
# `modulation` only at its start, before self_attn: a block's own tensors must belong to the first phase.
WAN_PHASES: tuple[tuple[str, ...], ...] = (("modulation", "self_attn"), ("norm3", "cross_attn"), ("ffn",))


@dataclass
class UnitDef:
    name: str  # "blocks.3" or "blocks.3.phase1"
    block: int
    phase: int | None
    triggers: list[nn.Module]  # forward pre-hooks on these make the unit current
    parts: list[tuple[nn.Module, str, tuple[str, ...] | None, bool]]  # (module, prefix, own names, recurse)

    def refs(self) -> list[TensorRef]:
        """The unit's tensors as they are NOW (call after the kernels' prepare has added its buffers)."""
        seen: set = set()
        out: list[TensorRef] = []
        for module, prefix, names, recurse in self.parts:
            out.extend(module_refs(module, prefix, names=names, recurse=recurse, seen=seen))
        return out


def get_blocks(model: nn.Module, attr: str = "blocks") -> nn.ModuleList:
    blocks = getattr(model, attr, None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise TypeError(f"offload needs the model's repeated blocks as a non-empty nn.ModuleList `{attr}`; "
                        f"{type(model).__name__} has none")
    return blocks


def non_block_refs(model: nn.Module, attr: str = "blocks") -> list[TensorRef]:
    """Every parameter and buffer of ``model`` outside ``model.<attr>`` (embeddings, head, RoPE tables...)."""
    refs: list[TensorRef] = []
    seen: set = set()
    for name, mod in model.named_modules():
        if name == attr or name.startswith(attr + "."):
            continue
        refs.extend(module_refs(mod, name, recurse=False, seen=seen))
    return refs


def check_phases(block: nn.Module, phases: tuple[tuple[str, ...], ...], where: str) -> None:
    """Every tensor of the block is in exactly one phase; the block's own tensors are in the first phase."""
    children = dict(block.named_children())
    own = {n for n, t in list(block._parameters.items()) + list(block._buffers.items()) if t is not None}
    problems: list[str] = []
    listed: list[str] = [n for phase in phases for n in phase]
    for name in sorted({n for n in listed if listed.count(n) > 1}):
        problems.append(f"'{name}' is in more than one phase")
    for p, phase in enumerate(phases):
        if not phase:
            problems.append(f"phase {p} is empty")
        for name in phase:
            if name in own:
                if p != 0:
                    problems.append(f"'{name}' is the block's own tensor: it must be in the first phase (the "
                                    f"block's forward may read it before any submodule of phase {p} runs)")
            elif name not in children:
                problems.append(f"'{name}' is neither a submodule nor a tensor of the block")
        if p > 0 and not any(n in children for n in phase):
            problems.append(f"phase {p} has no submodule whose forward could start it")
    for name in sorted(own - set(listed)):
        problems.append(f"the block's tensor '{name}' is in no phase")
    for name, child in children.items():
        holds = any(True for _ in child.parameters()) or any(True for _ in child.buffers())
        if name not in listed and holds:
            problems.append(f"submodule '{name}' holds tensors but is in no phase")
    if problems:
        raise ValueError(f"offload phases {phases} do not fit {where}: " + "; ".join(problems)
                         + ". Give the model an `offload_phases` attribute listing every child with tensors.")


def unit_defs(model: nn.Module, granularity: str, phases: tuple[tuple[str, ...], ...] | None = None,
              attr: str = "blocks") -> list[UnitDef]:
    """The units of ``model.<attr>`` in execution order."""
    blocks = get_blocks(model, attr)
    if granularity not in ("block", "phase"):
        raise ValueError(f"offload granularity must be 'block' or 'phase', not {granularity!r}")
    phases = tuple(tuple(p) for p in (phases or getattr(model, "offload_phases", None) or WAN_PHASES))
    defs: list[UnitDef] = []
    for i, block in enumerate(blocks):
        prefix = f"{attr}.{i}"
        if granularity == "block":
            defs.append(UnitDef(prefix, i, None, [block], [(block, prefix, None, True)]))
            continue
        check_phases(block, phases, f"{prefix} ({type(block).__name__})")
        children = dict(block.named_children())
        for p, phase in enumerate(phases):
            own = tuple(n for n in phase if n not in children)
            parts = [(block, prefix, own, False)] if own else []
            parts += [(children[n], f"{prefix}.{n}", None, True) for n in phase if n in children]
            triggers = [block] if p == 0 else [children[n] for n in phase if n in children]
            defs.append(UnitDef(f"{prefix}.phase{p}", i, p, triggers, parts))
    return defs
