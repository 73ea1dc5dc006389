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


def batch_stride(t) -> int:
    """The stride of ``t``'s first (batch) dimension as a kernel argument: 0 when that dimension
    has one entry, since the kernels only index it with the batch number, which is then 0.

    Triton types an integer argument i32 below 2**31 and i64 from there: a batch stride is the
    whole per-sequence size (``seqlen * heads * head_dim`` for q), which reaches 2**31 at 512K
    tokens in Llama-3-8B's geometry, so without this a batch of one would compile a second
    variant of every kernel there. Batches of several sequences that long still do."""
    return 0 if t.shape[0] == 1 else t.stride(0)
