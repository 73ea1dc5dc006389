"""Context parallelism on a CUDA GPU: a world of one on NCCL is the single-process operator, and
every rank's stage 3 (the stage-3 kernel natively, over the rank's own keys and its fetched keys)
gives the operator's output."""

from __future__ import annotations

import datetime

import pytest
import torch

from sampleattn import SampleAttentionConfig, sample_attention
from sampleattn.rules import BlockRule

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CONFIGS = {
    "sampled": SampleAttentionConfig(dense_below=0),
    "block": SampleAttentionConfig(dense_below=0, window_ratio=0.02, selection=BlockRule(beta=0.9, stripes=True)),
}


def _inputs(seqlen: int):
    """fp16 q (1, S, 8, 128), k and v (1, S, 2, 128) with sinks, stripes and a local window."""
    from sampleattn.synthetic import structured_qkv

    return structured_qkv(1, seqlen, seqlen, 8, 2, 128, dtype=torch.float16, device="cuda", seed=seqlen)


@pytest.mark.parametrize("rule", sorted(CONFIGS))
def test_world_of_one_on_nccl_equals_the_operator(rule):
    import torch.distributed as dist

    from sampleattn.distributed import sample_attention_cp
    from sampleattn.distributed.testing import free_port

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        q, k, v = _inputs(4096)
        out, plan = sample_attention(q, k, v, CONFIGS[rule], return_plan=True)
        out_cp, cp_plan = sample_attention_cp(q, k, v, CONFIGS[rule], return_plan=True)
        assert torch.equal(out_cp, out)
        assert torch.equal(cp_plan.plan.col_idx, plan.col_idx)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("rule", sorted(CONFIGS))
def test_every_ranks_stage3_on_the_gpu_gives_the_operators_output(rule, layout):
    """Chunks of 1,000 rows over 8 ranks (boundaries inside query and key blocks): each rank's
    kernel calls over its own and its fetched keys, merged, equal the operator on the whole
    sequence to within the fp16 rounding of the partial outputs."""
    from sampleattn.distributed.testing import stage3_of_every_rank

    q, k, v = _inputs(8000)
    config = CONFIGS[rule]
    out_ref, lse_ref, plan = sample_attention(q, k, v, config, return_lse=True, return_plan=True)
    assert plan.mean_density < 0.5  # a sparse plan: few keys travel, most are skipped
    out, lse = stage3_of_every_rank(q, k, v, plan, config, layout=layout, world=8, backend="triton")
    assert not torch.isnan(out).any()
    err = (out - out_ref.float()).norm() / out_ref.float().norm()
    assert err < 2e-3, float(err)
    torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-4)
