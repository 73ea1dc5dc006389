"""World size 1 on NCCL is the single-process operator (a CUDA GPU needed)."""

from __future__ import annotations

import datetime

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_world_of_one_on_nccl_equals_the_operator():
    import torch.distributed as dist

    from sampleattn import SampleAttentionConfig, sample_attention
    from sampleattn.distributed import sample_attention_cp
    from sampleattn.distributed.testing import free_port

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, 4096, h, 128, device="cuda", dtype=torch.float16, generator=g) for h in (8, 2, 2))
        config = SampleAttentionConfig(dense_below=0)
        out, plan = sample_attention(q, k, v, config, return_plan=True)
        out_cp, cp_plan = sample_attention_cp(q, k, v, config, return_plan=True)
        assert torch.equal(out_cp, out)
        assert torch.equal(cp_plan.plan.col_idx, plan.col_idx)
    finally:
        dist.destroy_process_group()
