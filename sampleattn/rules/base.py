"""The selection-rule type: what every way of choosing the mask provides.

A selection rule decides which keys each query row keeps beyond its local window. It owns:

* its parameters (pydantic fields of the rule; ``name`` tells the rules apart in JSON),
* its plan step with the Triton kernels (`SelectionRule.plan`) and with plain PyTorch
  (`SelectionRule.plan_reference`), both returning a `sampleattn.planning.SparsePlan`,
* its cost model (`SelectionRule.estimation_cost`, in units of one dense causal attention),
* its search space for the tuner (`SelectionRule.suggest`),
* what of it enters a profile's content hash (`SelectionRule.hash_fields`).

The operator, the tuner, the store and the command-line tools ask the rule; none of them
compares rule names. A new rule is one module under `sampleattn.rules` plus one line in
`sampleattn.rules.RULES`.

This module imports nothing heavy: the store's schemas load it through `sampleattn.config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from pydantic import ConfigDict

from sampleattn.config_errors import DescribedModel

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from sampleattn.config import SampleAttentionConfig
    from sampleattn.planning import PlanSetup, SparsePlan

__all__ = ["SelectionRule", "sampled_pair_share"]


def sampled_pair_share(config: "SampleAttentionConfig", plan: "SparsePlan | None") -> float:
    """The causal pairs of the plan's sampled rows over all causal pairs (bottom-right
    alignment); without a plan, the config's ``sample_ratio``."""
    if plan is None:
        return config.sample_ratio
    offset = plan.seqlen_k - plan.seqlen_q
    rows = plan.sampled_rows.double().cpu()
    visible = float((rows + offset + 1).clamp(max=plan.seqlen_k).sum())
    total = plan.seqlen_q * offset + plan.seqlen_q * (plan.seqlen_q + 1) / 2
    return visible / total if total > 0 else 0.0


class SelectionRule(DescribedModel):
    """Base of the selection rules (frozen, hashable, no unknown fields; out-of-range values are
    refused with the field's range and meaning, as the config's are)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: One-line description for tables and ``--help``.
    summary: ClassVar[str] = ""

    # -- parameters --------------------------------------------------------------------------
    def check(self, config: "SampleAttentionConfig") -> None:
        """Raise `ValueError` when the rule's parameters do not fit the rest of the config."""

    def for_alpha(self, base_alpha: float, alpha: float) -> "SelectionRule":
        """The rule to use when a layer's override replaces the profile's alpha ``base_alpha``
        by ``alpha`` (a rule whose parameters are tied to alpha rescales them here)."""
        return self

    def keeps_everything(self, config: "SampleAttentionConfig") -> bool:
        """Whether every visible key is kept whatever the input (the call is dense attention)."""
        return config.alpha >= 1.0 or config.window_ratio >= 1.0

    def hash_fields(self) -> dict[str, Any]:
        """The rule's part of a profile's canonical JSON (`sampleattn.store.schemas.content_hash`):
        flat ``config`` keys, parameters at their defaults left out, so that a hash stays the same
        when a later version adds a parameter."""
        data = {"selection": self.name}
        defaults = type(self)()
        for field in type(self).model_fields:
            if field != "name" and getattr(self, field) != getattr(defaults, field):
                data[field] = getattr(self, field)
        return data

    def describe(self) -> str:
        """Short text for tables: the name and the parameters that differ from the defaults."""
        extra = {k: v for k, v in self.hash_fields().items() if k != "selection"}
        return self.name + "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}" for k, v in extra.items())

    # -- planning ----------------------------------------------------------------------------
    def shape_setup(self, config: "SampleAttentionConfig", *, alpha: "torch.Tensor", window: "torch.Tensor",
                    q_per_sel: int, head_dim: int, seqlen_q: int, seqlen_k: int, device: str) -> dict:
        """Rule-specific tensors that depend only on shapes (cached with the plan's setup)."""
        return {}

    def plan(self, setup: "PlanSetup", q: "torch.Tensor", k: "torch.Tensor", config: "SampleAttentionConfig", *,
             keep_scores: bool, reports: bool) -> "SparsePlan":
        """Stages 1-2 with the Triton kernels. q (B, Sq, Hq, D), k (B, Sk, Hkv, D)."""
        raise NotImplementedError

    def plan_reference(self, setup: "PlanSetup", q: "torch.Tensor", k: "torch.Tensor",
                       config: "SampleAttentionConfig", *, keep_scores: bool, reports: bool) -> "SparsePlan":
        """Stages 1-2 in plain PyTorch, the same rule as `plan` (the oracle of the tests)."""
        raise NotImplementedError

    # -- cost and search ---------------------------------------------------------------------
    def estimation_cost(self, config: "SampleAttentionConfig", plan: "SparsePlan | None" = None) -> float:
        """Cost of the plan's estimation passes in units of one dense causal attention over the
        same rows and keys, each pass over a share of the pairs counted as that share (the
        tuner's CPU latency model: ``dense_ms * (density + estimation_cost)``). With a plan, from
        its sampled rows and reports; without, from the config alone."""
        raise NotImplementedError

    @classmethod
    def suggest(cls, trial: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        """The rule's parameters drawn from an Optuna ``trial`` (names prefixed by the rule's
        name where they could clash); ``config`` holds the common parameters already drawn."""
        return {}
