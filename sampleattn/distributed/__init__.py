"""Sparse context parallelism: SampleAttention over a sequence split across ranks.

``sample_attention_cp(q_local, k_local, v_local, config, group=..., layout="contiguous")`` on
every rank of a `torch.distributed` group (gloo on CPUs, NCCL on GPUs). Stages 1-2 agree on the
single-process plan with little traffic (sampled query rows, partial log-sum-exps, merged top
column scores, pooled keys); stage 3 fetches per rank only the keys and values its rows keep.
`ByteCounter` counts the bytes each rank sends (docs/distributed.md compares them with ring
attention's; ``python -m sampleattn.distributed.bytes`` prints the comparison).
"""

from __future__ import annotations

from .api import sample_attention_cp
from .comm import ByteCounter, Communicator, ContextParallelError
from .layout import Layout, SequenceLayout, join_sequence, split_sequence
from .plan import ContextParallelPlan, gather_plan

__all__ = ["ByteCounter", "Communicator", "ContextParallelError", "ContextParallelPlan", "Layout", "SequenceLayout",
           "gather_plan", "join_sequence", "sample_attention_cp", "split_sequence"]
