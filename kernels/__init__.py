"""Triton kernels of SampleAttention and their launchers (knows nothing of the rest of the package)."""
