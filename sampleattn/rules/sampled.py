"""The paper's rule (method.md, sections 3-4): stripe columns scored by the sampled rows.

Stage 1 computes the sampled rows' exact softmax statistics and, per column, the mass they
put on it outside their windows; stage 2 keeps, per selection head and segment, the shortest
prefix of columns by descending score whose mass with the windows' reaches alpha.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping

from .base import SelectionRule, sampled_pair_share

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from sampleattn.config import SampleAttentionConfig
    from sampleattn.planning import PlanSetup, RowStatistics, SparsePlan

__all__ = ["SampledRule", "select_stripes"]


def select_stripes(
    setup: "PlanSetup", stats: "RowStatistics", *, max_count: int | None = None, covered: int = 0,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Stage 2 of the paper's rule: (col_idx, col_count) reaching each selection head's alpha,
    with at most ``max_count`` columns per head and segment (None: no limit). Keys ``[0,
    covered)`` are kept by another part of the mask (the block rule's sink blocks): their mass
    counts as reached and none of them is taken as a column."""
    import dataclasses

    import torch

    from sampleattn.planning import selection_inputs
    from sampleattn.selection import select_columns, without_covered_keys

    head_mass = None
    if covered > 0:
        head_mass = stats.scores[..., :covered].sum(dim=-1)
        key_pos = torch.arange(stats.scores.shape[-1], device=stats.scores.device)
        stats = dataclasses.replace(stats, scores=without_covered_keys(stats.scores, key_pos, covered))
    window_sum, n_counted = selection_inputs(setup, stats)
    if head_mass is not None and stats.wmass is not None:
        window_sum = window_sum + head_mass  # from the scores, the zeroed mass is the window's already
    return select_columns(stats.scores, window_sum, n_counted, setup.alpha_sel_dev, reach=setup.reach_dev,
                          max_count=max_count)


class SampledRule(SelectionRule):
    """The paper's rule: one set of stripe columns per head (and segment), no parameters of
    its own (alpha, window_ratio and sample_ratio are the config's)."""

    summary = "stripe columns scored by the sampled rows, up to alpha (the paper's rule)"
    name: Literal["sampled"] = "sampled"

    def hash_fields(self) -> dict[str, Any]:
        return {}  # the rule of the first release: profiles' hashes stay as they were

    def plan(self, setup, q, k, config, *, keep_scores, reports) -> "SparsePlan":
        from sampleattn.planning import make_plan, row_statistics

        stats = row_statistics(setup, q, k, reports=reports)
        col_idx, col_count = select_stripes(setup, stats)
        return make_plan(setup, config, stats, col_idx, col_count, reports=reports, keep_scores=keep_scores)

    def plan_reference(self, setup, q, k, config, *, keep_scores, reports) -> "SparsePlan":
        from sampleattn.planning import make_plan
        from sampleattn.reference import row_statistics_ref

        stats = row_statistics_ref(setup, q, k)
        col_idx, col_count = select_stripes(setup, stats)
        return make_plan(setup, config, stats, col_idx, col_count, reports=reports, keep_scores=keep_scores)

    def estimation_cost(self, config: "SampleAttentionConfig", plan=None) -> float:
        # two passes (log-sum-exp, then column scores) over the sampled rows
        return 2.0 * sampled_pair_share(config, plan)

    @classmethod
    def suggest(cls, trial: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        return {}
