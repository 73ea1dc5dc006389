"""The rescored rule: the paper's candidates, re-ranked by every query row.

The paper's rule scores the key columns with a few sampled query rows; the rows it does not
sample need columns the sampled rows do not see (docs/accuracy.md). This rule keeps stage 1,
takes a generous candidate set with the paper's rule at ``candidate_alpha``, then lets the
ranking rows (every query block, or one in every ``rescore_stride``) rank the candidates by
their probability outside their windows, normalised over the window and the candidates; the
final set is the shortest prefix reaching alpha of the ranking rows' mass
(`sampleattn.rescoring`). Two more passes over the candidates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping

from pydantic import Field

from .base import SelectionRule, sampled_pair_share
from .sampled import select_stripes

if TYPE_CHECKING:  # pragma: no cover
    from sampleattn.config import SampleAttentionConfig
    from sampleattn.planning import SparsePlan

__all__ = ["RESCORE_STRIDES", "RescoredRule"]

#: The strides the tuner tries.
RESCORE_STRIDES = (1, 2, 4, 8)


class RescoredRule(SelectionRule):
    """Candidates by the paper's rule at ``candidate_alpha``, re-ranked by every query row.

    Attributes:
        candidate_alpha: stage A's alpha (at least the config's alpha).
        rescore_stride: one query block of ``block_m`` rows in every ``rescore_stride`` ranks the
            candidates (the last block always does); 1 = every row.
    """

    summary = "the sampled rule's candidates re-ranked by every query row"
    name: Literal["rescored"] = "rescored"
    candidate_alpha: float = Field(0.999, gt=0.0, le=1.0, description="stage A's alpha of the rescored selection, at least alpha")
    rescore_stride: int = Field(1, ge=1, description="how many query blocks share one ranking block under selection='rescored'")

    def check(self, config: "SampleAttentionConfig") -> None:
        if self.candidate_alpha < config.alpha:
            raise ValueError(
                f"candidate_alpha={self.candidate_alpha} is below alpha={config.alpha}: the "
                "candidates must hold at least the mass the final set keeps; raise candidate_alpha"
            )
        if config.segment_rows is not None:
            raise ValueError("the rescored rule selects one column set per head; leave segment_rows=None")

    def candidate_alpha_for(self, base_alpha: float, alpha: float) -> float:
        """Stage A's alpha for another alpha (a layer's or a head's) with this rule's share of the
        remaining mass over ``base_alpha``: ``alpha + share * (1 - alpha)``, at least
        ``candidate_alpha``."""
        share = 1.0 if base_alpha >= 1.0 else max(0.0, (self.candidate_alpha - base_alpha) / (1.0 - base_alpha))
        return min(1.0, max(self.candidate_alpha, alpha + share * (1.0 - alpha)))

    def for_alpha(self, base_alpha: float, alpha: float) -> "RescoredRule":
        return self.model_copy(update={"candidate_alpha": self.candidate_alpha_for(base_alpha, alpha)})

    def shape_setup(self, config, *, alpha, window, q_per_sel, head_dim, seqlen_q, seqlen_k, device) -> dict:
        import torch

        from sampleattn.planning import selection_alpha
        from sampleattn.rescoring import ranked_pairs, ranking_block, ranking_rows

        # A head override of alpha keeps the rule's candidate share (never below candidate_alpha).
        candidate = torch.tensor([self.candidate_alpha_for(config.alpha, float(a))
                                  for a in selection_alpha(alpha, q_per_sel)], dtype=torch.float32)
        block = ranking_block(config.block_m, head_dim)
        rank_rows = ranking_rows(seqlen_q, block, self.rescore_stride)
        pairs = ranked_pairs(window, rank_rows, seqlen_q=seqlen_q, seqlen_k=seqlen_k, q_per_sel=q_per_sel)
        return {"candidate_alpha_sel": candidate.to(device), "rank_block": block, "rank_rows": rank_rows,
                "ranked_pairs": pairs.to(device)}

    def _plan(self, setup, config, stats, rescore_of, *, keep_scores, reports) -> "SparsePlan":
        from sampleattn.planning import make_plan, selection_inputs
        from sampleattn.rescoring import select_rescored
        from sampleattn.selection import density_per_head, select_columns

        extras = setup.extras
        window_sum, n_counted = selection_inputs(setup, stats)
        cand_idx, cand_count = select_columns(stats.scores, window_sum, n_counted, extras["candidate_alpha_sel"],
                                              reach=setup.reach_dev)
        col_idx, col_count = select_rescored(cand_idx, rescore_of(cand_idx, cand_count), extras["ranked_pairs"],
                                             setup.alpha_sel_dev, reach=setup.reach_dev, seqlen_k=setup.seqlen_k)
        candidate_density = None
        if reports:  # a report (the tuner's cost estimate), not needed to attend
            candidate_density = density_per_head(cand_idx, cand_count, setup.window_dev,
                                                 segment_rows=setup.segment_rows, **setup.shape)
        return make_plan(setup, config, stats, col_idx, col_count, reports=reports, keep_scores=keep_scores,
                         candidate_density=candidate_density,
                         ranking_fraction=extras["rank_rows"].numel() / setup.seqlen_q)

    def plan(self, setup, q, k, config, *, keep_scores, reports) -> "SparsePlan":
        from sampleattn.kernels import rescore_candidates
        from sampleattn.planning import row_statistics

        stats = row_statistics(setup, q, k, reports=reports)

        def rescore_of(cand_idx, cand_count):
            return rescore_candidates(q, k, cand_idx, cand_count, setup.window_dev, q_per_sel=setup.q_per_sel,
                                      scale=setup.scale, block_m=setup.extras["rank_block"],
                                      m_stride=self.rescore_stride)

        return self._plan(setup, config, stats, rescore_of, keep_scores=keep_scores, reports=reports)

    def plan_reference(self, setup, q, k, config, *, keep_scores, reports) -> "SparsePlan":
        from sampleattn.reference import rescore_ref, row_statistics_ref

        stats = row_statistics_ref(setup, q, k)

        def rescore_of(cand_idx, cand_count):
            return rescore_ref(q, k, cand_idx, cand_count, setup.window_dev, q_per_sel=setup.q_per_sel,
                               scale=setup.scale, block_m=setup.extras["rank_block"], m_stride=self.rescore_stride)

        return self._plan(setup, config, stats, rescore_of, keep_scores=keep_scores, reports=reports)

    def estimation_cost(self, config: "SampleAttentionConfig", plan: "SparsePlan | None" = None) -> float:
        # the sampled rule's passes, then two q.k passes of the ranking rows over the candidates
        # (known only from a plan with reports: its candidate density)
        ranking = 0.0
        if plan is not None and plan.candidate_density is not None:
            ranking = float(plan.candidate_density.mean()) * plan.ranking_fraction
        return 2.0 * sampled_pair_share(config, plan) + ranking

    @classmethod
    def suggest(cls, trial: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        alpha = config["alpha"]
        share = trial.suggest_float("candidate_share", 0.5, 0.99)
        return {"candidate_alpha": min(1.0, alpha + share * (1.0 - alpha)),
                "rescore_stride": trial.suggest_categorical("rescore_stride", list(RESCORE_STRIDES))}
