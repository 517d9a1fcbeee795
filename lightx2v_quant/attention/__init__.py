"""Attention kernels beyond torch SDPA (the model's attention interface selects them by name)."""
