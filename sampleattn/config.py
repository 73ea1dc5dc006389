"""Validated, immutable configuration of the SampleAttention operator.

`SampleAttentionConfig` holds the hyperparameters of one attention call (method.md, section 5).
`ModelAttentionProfile` holds what a tuned profile carries for a whole model: a global config,
per-layer overrides, and per-head overrides of alpha and window_ratio.

These pydantic models are the only part of `sampleattn` that the store depends on, so they
import nothing heavy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .config_errors import DescribedModel

__all__ = [
    "GQAGranularity",
    "HeadOverride",
    "LayerOverride",
    "ModelAttentionProfile",
    "SampleAttentionConfig",
    "Selection",
    "SUPPORTED_HEAD_DIMS",
    "ceil_ratio",
]

GQAGranularity = Literal["query_head", "kv_head"]
Selection = Literal["sampled", "rescored"]

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
        selection: how the columns are chosen. ``"sampled"`` is the paper's rule: the sampled
            rows score the columns and the shortest prefix reaching alpha is kept.
            ``"rescored"`` first takes candidates with the paper's rule at ``candidate_alpha``,
            then lets every query row (or one query block in every ``rescore_stride``) rank
            those candidates by its probability outside its window, normalised over the window
            and the candidates, and keeps the shortest prefix reaching alpha. It costs two more
            passes over the candidates and is closer to the all-rows selection (docs/accuracy.md).
        candidate_alpha: stage A's alpha for ``"rescored"`` (at least alpha).
        rescore_stride: with ``"rescored"``, one query block of ``block_m`` rows in every
            ``rescore_stride`` ranks the candidates (the last block always does); 1 = every row.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(0.95, gt=0.0, le=1.0, description="the CRA target, the share of the sampled rows' attention mass that the window plus the selected columns keep")
    window_ratio: float = Field(0.08, ge=0.0, le=1.0, description="the local window's width as a share of the key length")
    sample_ratio: float = Field(0.05, gt=0.0, le=1.0, description="the share of query rows sampled to score the key columns")
    gqa_granularity: GQAGranularity = Field("query_head", description="one column set per query head, or one per KV-head group")
    dense_below: int = Field(32_768, ge=0, description="the key length below which dense attention (SDPA) runs instead")
    block_m: int = Field(128, ge=16, le=256, description="the query tile of the sparse kernel, a power of two")
    block_n: int = Field(128, ge=16, le=256, description="the key tile of the sparse kernel, a power of two")
    sample_block: int = Field(16, ge=16, le=128, description="the rows per sampled block in stage 1, a power of two")
    segment_rows: int | None = Field(None, ge=16, description="the query rows per column set, a multiple of block_m (None: one set per head)")
    selection: Selection = "sampled"
    candidate_alpha: float = Field(0.999, gt=0.0, le=1.0, description="stage A's alpha of the rescored selection, at least alpha")
    rescore_stride: int = Field(1, ge=1, description="how many query blocks share one ranking block under selection='rescored'")

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
        if self.selection == "rescored":
            if self.candidate_alpha < self.alpha:
                raise ValueError(
                    f"candidate_alpha={self.candidate_alpha} is below alpha={self.alpha}: the "
                    "candidates must hold at least the mass the final set keeps; raise candidate_alpha"
                )
            if self.segment_rows is not None:
                raise ValueError(
                    "selection='rescored' selects one column set per head; leave segment_rows=None"
                )
        return self

    def candidate_alpha_for(self, alpha: float) -> float:
        """Stage A's alpha for another alpha (a layer's or a head's) with this config's share of
        the remaining mass: ``alpha + share * (1 - alpha)``, at least ``candidate_alpha``."""
        share = 1.0 if self.alpha >= 1.0 else max(0.0, (self.candidate_alpha - self.alpha) / (1.0 - self.alpha))
        return min(1.0, max(self.candidate_alpha, alpha + share * (1.0 - alpha)))

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

    def check_geometry(self, num_layers: int, nheads_q: int, *, model: str | None = None) -> None:
        """Raise `ValueError` if an override names a layer or query head the model lacks."""
        who = f"model {model}" if model else "the model"
        for layer, override in self.layers.items():
            if layer >= num_layers:
                raise ValueError(f"the profile overrides layer {layer}, but {who} has {num_layers} layers")
            for head in override.heads:
                if head >= nheads_q:
                    raise ValueError(
                        f"the profile overrides head {head} of layer {layer}, but {who} has "
                        f"{nheads_q} query heads"
                    )

    def layer_config(self, layer: int) -> SampleAttentionConfig:
        """The config of one layer, with its override (not its head overrides) applied.

        Under ``selection="rescored"`` a layer's alpha keeps the profile's candidate share (the
        part of the mass above alpha that stage A adds): ``candidate_alpha`` rises with alpha,
        never below the profile's (`SampleAttentionConfig.candidate_alpha_for`).
        """
        override = self.layers.get(layer)
        if override is None:
            return self.config
        changes = override.model_dump(exclude={"heads"}, exclude_none=True)
        if not changes:
            return self.config
        if self.config.selection == "rescored" and "alpha" in changes:
            changes["candidate_alpha"] = self.config.candidate_alpha_for(changes["alpha"])
        return SampleAttentionConfig.model_validate({**self.config.model_dump(), **changes})

    def head_overrides(self, layer: int) -> dict[int, HeadOverride]:
        """Per-head overrides of one layer (query-head index -> override)."""
        override = self.layers.get(layer)
        return dict(override.heads) if override is not None else {}
