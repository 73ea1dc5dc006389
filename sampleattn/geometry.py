"""`Geometry`: the attention shape of a model, one type for the whole project.

The operator checks profiles and inputs against it, the model catalogue describes each model
with it (`sampleattn.models.ModelSpec.geometry`), synthetic calibration draws q/k/v in it, and
the store records it with every model. Head counts are spelled ``num_q_heads`` and
``num_kv_heads`` everywhere a model is described (as in Hugging Face configs and the store's
columns); ``nheads_q`` and ``nheads_kv`` remain the names of tensor dimensions in the kernels'
flash-attn layout.

For a model of this geometry, q is ``(batch, seqlen, num_q_heads, head_dim)`` and k, v are
``(batch, seqlen, num_kv_heads, head_dim)``.
"""

from __future__ import annotations

import numbers
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["Geometry"]


@dataclass(frozen=True)
class Geometry:
    """Layers, query heads, KV heads and head dim of a model's attention.

    Raises `ValueError` when a count is not positive, or when the query heads are not a
    multiple of the KV heads (grouped-query attention needs an integer group size).
    """

    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        for name, value in zip(("num_layers", "num_q_heads", "num_kv_heads", "head_dim"), astuple(self)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy or torch ints compare and hash as ints
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(
                f"num_q_heads ({self.num_q_heads}) is not a multiple of num_kv_heads ({self.num_kv_heads}); "
                "grouped-query attention needs an integer group size"
            )

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for multi-head attention)."""
        return self.num_q_heads // self.num_kv_heads

    @property
    def heads(self) -> tuple[int, int, int]:
        """``(num_q_heads, num_kv_heads, head_dim)``: the shape of every layer's attention, what
        q/k/v tensors show of the geometry (``(q.shape[2], k.shape[2], q.shape[3])``)."""
        return self.num_q_heads, self.num_kv_heads, self.head_dim

    def check_qk(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """Raise `ValueError` unless q ``(B, Sq, num_q_heads, head_dim)`` and k ``(B, Sk,
        num_kv_heads, head_dim)`` have this geometry's heads and head dim."""
        got = (q.shape[2], k.shape[2], q.shape[3])
        want = self.heads
        if got != want:
            raise ValueError(
                f"q/k have (num_q_heads, num_kv_heads, head_dim)={got}, but the model's geometry is {want}: "
                "pass the q/k/v of the model this geometry describes"
            )
