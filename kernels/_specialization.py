"""The kernels' integer arguments that Triton must not specialise on.

Triton compiles one variant of a kernel per divisibility class (by 16, and the value 1) of each
integer argument. The sequence lengths, and the strides that follow them (of the per-row
log-sum-exp, the per-block column counts, the column scores), would then add compiled variants
as new lengths arrive: the first requests at new lengths would each pay a compile of seconds.
These arguments only bound loops, build masks along the row and key axes, and offset per-row or
per-block metadata; the loads that vectorise run along the contiguous head dimension, whose
strides stay specialised. `tests/test_no_recompile.py` counts the compile keys over new lengths.
"""

#: Every kernel that takes the lengths lists these in ``@triton.jit(do_not_specialize=...)``.
LENGTH_ARGS = ["seqlen_q", "seqlen_k"]
