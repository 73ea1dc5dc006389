"""Validated, immutable configuration of the SampleAttention operator.

`SampleAttentionConfig` holds the hyperparameters of one attention call (method.md, section 5).
`ModelAttentionProfile` holds what a tuned profile carries for a whole model: a global config,
per-layer overrides, and per-head overrides of alpha and window_ratio.

These pydantic models are the only part of `sampleattn` that the store depends on, so they
import nothing heavy.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sampleattn.kernels.tiles import BLOCK_M, BLOCK_N

from .config_errors import DescribedModel
from .rules import LEGACY_FIELDS, SelectionRuleField, rule_from

__all__ = [
    "GQAGranularity",
    "HeadOverride",
    "LayerOverride",
    "ModelAttentionProfile",
    "SampleAttentionConfig",
    "SUPPORTED_HEAD_DIMS",
    "ceil_ratio",
]

GQAGranularity = Literal["query_head", "kv_head"]

#: Head dimensions the Triton kernels are built for.
SUPPORTED_HEAD_DIMS = (64, 96, 128, 256)


def ceil_ratio(ratio: float, length: int) -> int:
    """``ceil(ratio * length)``, rounded first so that 0.08 * 100 = 8.000000000000002 gives 8."""
    return int(-(-round(ratio * length, 9) // 1))


class SampleAttentionConfig(DescribedModel):
    """Hyperparameters of SampleAttention for one layer (all fields keyword-only).

    Attributes:
        alpha: CRA target in (0, 1]: the fraction of the sampled rows' attention mass that the
            window plus the selected columns must keep. 1 keeps every column (exact attention).
        window_ratio: local window width as a fraction of seqlen_k, in [0, 1];
            the window holds ``ceil(window_ratio * seqlen_k)`` keys ending at the diagonal.
        sample_ratio: fraction of query rows sampled to score the key columns, in (0, 1].
        gqa_granularity: ``"query_head"`` selects one column set per query head (the paper's
            rule); ``"kv_head"`` sums the scores of the query heads that share a KV head and
            selects one set per group, so the kernel loads each gathered K/V row for the group.
        dense_below: run dense attention (PyTorch SDPA) when seqlen_k is below this. The default,
            32768, is the measured break-even against cuDNN on the H200 (Llama-3-8B geometry,
            real SmolLM2 heads: 0.84x at 16K, 1.77x at 32K on 2026-12-02; docs/benchmarks.md). Models with
            few heads or small head dims break even later (SmolLM2's own geometry: tune it).
        block_m, block_n: query and key tile sizes of the sparse attention kernel.
        sample_block: rows per sampled block in stage 1 (sampled rows come in contiguous
            blocks of this many rows, spread at a regular stride; the last rows always included).
        segment_rows: if set, one column set is selected per segment of this many query rows
            (a multiple of block_m) instead of one per head; ``None`` means one set per head.
        selection: the selection rule (`sampleattn.rules`): how the keys beyond the window are
            chosen, with its own parameters. `SampledRule` (``"sampled"``, the default) is the
            paper's: the sampled rows score the columns and the shortest prefix reaching alpha
            is kept. `RescoredRule` (``"rescored"``) lets every query row re-rank candidates the
            paper's rule took at a higher alpha. `BlockRule` (``"block"``) adds key blocks chosen
            per query block from every row's scores against pooled keys (method.md, section 4b).
            A rule name stands for that rule with its default parameters; the flat fields of
            earlier versions (``candidate_alpha``, ``rescore_stride``) are still read.
        dense_above: after planning, the KV heads whose planned density (mean over their query
            heads and the batch) is above this run dense attention instead of stage 3 (their
            sparse attention would not beat the dense kernel); 1 never.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(0.95, gt=0.0, le=1.0, description="the CRA target, the share of the sampled rows' attention mass that the window plus the selected columns keep")
    window_ratio: float = Field(0.08, ge=0.0, le=1.0, description="the local window's width as a share of the key length")
    sample_ratio: float = Field(0.05, gt=0.0, le=1.0, description="the share of query rows sampled to score the key columns")
    gqa_granularity: GQAGranularity = Field("query_head", description="one column set per query head, or one per KV-head group")
    dense_below: int = Field(32_768, ge=0, description="the key length below which dense attention (SDPA) runs instead")
    block_m: int = Field(BLOCK_M, ge=16, le=256, description="the query tile of the sparse kernel, a power of two")
    block_n: int = Field(BLOCK_N, ge=16, le=256, description="the key tile of the sparse kernel, a power of two")
    sample_block: int = Field(16, ge=16, le=128, description="the rows per sampled block in stage 1, a power of two")
    segment_rows: int | None = Field(None, ge=16, description="the query rows per column set, a multiple of block_m (None: one set per head)")
    selection: SelectionRuleField = Field(default_factory=lambda: rule_from("sampled"), description="the selection rule (sampleattn.rules): sampled, rescored or block, by name or as a rule object")
    dense_above: float = Field(1.0, gt=0.0, le=1.0, description="the planned density of a KV head above which it runs dense attention instead of stage 3")

    @model_validator(mode="before")
    @classmethod
    def _rule_from_flat_fields(cls, data: Any) -> Any:
        """Read a rule given by name, and the rule parameters earlier versions kept flat."""
        if not isinstance(data, dict):
            return data
        flat = {name: data[name] for name in LEGACY_FIELDS if name in data}
        if not flat and not isinstance(data.get("selection", None), str):
            return data
        data = {key: value for key, value in data.items() if key not in flat}
        data["selection"] = rule_from(data.get("selection", "sampled"), **flat)
        return data

    @field_validator("block_m", "block_n", "sample_block")
    @classmethod
    def _power_of_two(cls, value: int, info) -> int:
        if value & (value - 1):
            raise ValueError(f"{info.field_name}={value} must be a power of two (16, 32, 64, 128...)")
        return value

    @model_validator(mode="after")
    def _segments_align(self) -> "SampleAttentionConfig":
        if self.segment_rows is not None and self.segment_rows % self.block_m:
            raise ValueError(
                f"segment_rows={self.segment_rows} must be a multiple of block_m={self.block_m}, "
                "so that every query block lies in one segment"
            )
        self.selection.check(self)
        return self

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> "SampleAttentionConfig":
        """A copy with ``update`` applied and validated (pydantic's own copy would not validate:
        a rule name or an out-of-range value would slip through)."""
        if not update:
            return super().model_copy(deep=deep)
        return type(self).model_validate({**dict(self), **update})

    def keeps_everything(self) -> bool:
        """Whether this config keeps every visible key whatever the input (dense attention)."""
        return self.selection.keeps_everything(self)

    def window_size(self, seqlen_k: int) -> int:
        """Window width in keys for a key length: ``ceil(window_ratio * seqlen_k)``."""
        return ceil_ratio(self.window_ratio, seqlen_k)

    def sampled_rows(self, seqlen_q: int) -> int:
        """Number of query rows sampled: ``ceil(sample_ratio * seqlen_q)``."""
        return max(1, ceil_ratio(self.sample_ratio, seqlen_q))


class HeadOverride(DescribedModel):
    """Per-head values that replace the layer's alpha and/or window_ratio."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float | None = Field(None, gt=0.0, le=1.0, description="the layer's or head's CRA target (as SampleAttentionConfig.alpha)")
    window_ratio: float | None = Field(None, ge=0.0, le=1.0, description="the layer's or head's window width as a share of the key length")


class LayerOverride(DescribedModel):
    """Per-layer values that replace those of the profile's global config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float | None = Field(None, gt=0.0, le=1.0, description="the layer's or head's CRA target (as SampleAttentionConfig.alpha)")
    window_ratio: float | None = Field(None, ge=0.0, le=1.0, description="the layer's or head's window width as a share of the key length")
    sample_ratio: float | None = Field(None, gt=0.0, le=1.0, description="the layer's share of query rows sampled")
    heads: dict[int, HeadOverride] = Field(default_factory=dict)


class ModelAttentionProfile(BaseModel):
    """The attention configuration of a whole model: global config, layer and head overrides.

    ``layers`` maps a layer index to its override; ``LayerOverride.heads`` maps a query-head
    index to its override. Indices are validated against the model's geometry when the profile
    is applied or stored (`check_geometry`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: SampleAttentionConfig = Field(default_factory=SampleAttentionConfig)
    layers: dict[int, LayerOverride] = Field(default_factory=dict)

    @field_validator("layers")
    @classmethod
    def _non_negative(cls, layers: dict[int, LayerOverride]) -> dict[int, LayerOverride]:
        for index, layer in layers.items():
            if index < 0:
                raise ValueError(f"layer index {index} is negative")
            for head in layer.heads:
                if head < 0:
                    raise ValueError(f"head index {head} of layer {index} is negative")
        return layers

    def check_geometry(self, num_layers: int, num_q_heads: int, *, model: str | None = None) -> None:
        """Raise `ValueError` if an override names a layer or query head the model lacks."""
        who = f"model {model}" if model else "the model"
        for layer, override in self.layers.items():
            if layer >= num_layers:
                raise ValueError(f"the profile overrides layer {layer}, but {who} has {num_layers} layers")
            for head in override.heads:
                if head >= num_q_heads:
                    raise ValueError(
                        f"the profile overrides head {head} of layer {layer}, but {who} has "
                        f"{num_q_heads} query heads"
                    )

    def layer_config(self, layer: int) -> SampleAttentionConfig:
        """The config of one layer, with its override (not its head overrides) applied.

        A rule whose parameters are tied to alpha follows a layer's alpha
        (`sampleattn.rules.SelectionRule.for_alpha`: the rescored rule's candidate share).
        """
        override = self.layers.get(layer)
        if override is None:
            return self.config
        changes = override.model_dump(exclude={"heads"}, exclude_none=True)
        if not changes:
            return self.config
        if "alpha" in changes:
            changes["selection"] = self.config.selection.for_alpha(self.config.alpha, changes["alpha"])
        return self.config.model_validate({**dict(self.config), **changes})

    def head_overrides(self, layer: int) -> dict[int, HeadOverride]:
        """Per-head overrides of one layer (query-head index -> override)."""
        override = self.layers.get(layer)
        return dict(override.heads) if override is not None else {}
