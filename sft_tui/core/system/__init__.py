"""The machine: NVIDIA GPUs through NVML, and `sft-tui doctor`'s checks of what works here.
"""
