"""Offloading the DIT (and the encoders) so that Wan 14B runs on a 24 GB card: model, block, phase and disk
modes with prefetch on a copy stream, plus the memory estimates behind ``offload=auto``.
See docs/offload.md."""

from lightx2v_quant.offload.disk import dit_files, save_by_block
from lightx2v_quant.offload.encoders import OnDemand, encoder_placement
from lightx2v_quant.offload.manager import MODES, OffloadHandle, wrap_for_offload
from lightx2v_quant.offload.memory import OffloadPlan, plan_offload
from lightx2v_quant.offload.units import WAN_PHASES

__all__ = ["MODES", "OffloadHandle", "OffloadPlan", "OnDemand", "WAN_PHASES", "dit_files",
           "encoder_placement", "plan_offload", "save_by_block", "wrap_for_offload"]
