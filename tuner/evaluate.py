"""How one trial is evaluated: per-layer error, retained mass, density and latency of a profile.

`LayerEvaluator` holds the calibration tensors of one length in memory (what a Ray worker keeps
between trials) and evaluates a `ModelAttentionProfile` on them:

* **error**: for each sample and layer, a fixed random subset of query rows (``rows_per_layer``,
  drawn once from a seed; the same rows for every head of the layer) is attended exactly, in
  fp32, once (`sampleattn.reference.attention_rows_ref`) and cached. A trial plans the layer
  with its config (stages 1-2: the Triton `plan` on a GPU, the PyTorch `plan_ref` on the CPU),
  attends the same rows under the plan's mask, and measures the relative L2 error
  ``||O~ - O||_F / ||O||_F`` over those rows and all heads of the layer. A layer's error is the
  mean over samples; the trial's ``rel_error`` is the mean over layers (``rel_error_max`` the
  worst layer).
* **retained mass** and **density**: the plan's own reports (`SparsePlan.retained_mean`,
  ``retained_min``, ``density``), averaged over heads, samples and layers (min for the min).
* **latency**: the whole attention of one prefill at the calibration shape, summed over the
  evaluated layers. On a GPU it is measured (`measure_cuda_ms`: CUDA events, median of repeats
  after warm-up, of `sampleattn.sample_attention` with the kernels, against dense SDPA). On the
  CPU it is *estimated* (`estimate_sparse_ms`):

      t_sparse = t_dense * (density + estimation_cost)

  where ``t_dense`` is the measured time of dense SDPA on the CPU at that shape, ``density`` the
  fraction of causal pairs the sparse kernel computes and ``estimation_cost`` the plan's passes
  as the selection rule counts them (`sampleattn.rules.SelectionRule.estimation_cost`; the paper's
  rule: twice the causal pairs of the sampled rows over all causal pairs, since stage 1 reads each
  sampled row twice; the block rule: two passes over the pooled keys, ``2 / key_block``).
  Selection (a sort per head) and the reports are left out.

A layer whose key length is below its config's ``dense_below`` runs dense: error 0, retained
mass 1, density 1, latency of dense attention.

`ModelEvaluator` measures what the model objective (`objectives.ModelObjective`) adds: a prefill of each
calibration sample with the trial's profile in every layer (through
`sampleattn.integrations.transformers.patch_model`) and the KL divergence and top-1 agreement
of its logits against the full-attention logits cached at capture time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .outcome import LayerMetrics, TrialResult

if TYPE_CHECKING:
    import torch

    from sampleattn.config import ModelAttentionProfile

__all__ = [
    "LayerEvaluator",
    "LayerMetrics",
    "ModelEvaluator",
    "TrialResult",
    "estimate_sparse_ms",
    "measure_cuda_ms",
]

#: Rows per (sample, layer) on which the error is measured.
DEFAULT_ROWS_PER_LAYER = 256


# ------------------------------------------------------------------------------------------ timing


def estimate_sparse_ms(dense_ms: float, density: float, estimation_cost: float) -> float:
    """The CPU's analytic latency of SampleAttention: ``dense_ms * (density + estimation_cost)``,
    ``estimation_cost`` the plan's passes in units of dense attention, as the selection rule
    counts them (`sampleattn.rules.SelectionRule.estimation_cost`: for the paper's rule, two
    passes over the sampled rows' pairs)."""
    return dense_ms * (min(1.0, density) + estimation_cost)


def measure_cuda_ms(fn, *, warmup: int = 2, repeats: int = 7) -> float:
    """Median time (ms) of ``fn()`` on the current CUDA device, timed with CUDA events."""
    from sampleattn.timing import cuda_ms

    return cuda_ms(fn, warmup=warmup, repeat=repeats)


# ------------------------------------------------------------------------------------------ layers


class LayerEvaluator:
    """Per-layer evaluation of profiles on the calibration samples of one length.

    Args:
        samples: calibration samples (`CalibrationSample` or `SyntheticSample`); each gives
            ``layer(i)`` -> ``{"q": (1, S, Hq, D), "k": (1, S, Hkv, D), "v": (1, S, Hkv, D)}``.
        layers: the layer indices to evaluate (default: all of the first sample's).
        device: ``"cpu"`` or ``"cuda"`` (the tensors are moved there once).
        rows_per_layer: rows per (sample, layer) on which the error is measured.
        seed: seed of the row subsets (fixed for the life of the evaluator, hence of the run).
        plan_backend: ``"triton"`` (`sampleattn.planning.plan`, the kernels) or ``"torch"``
            (`sampleattn.reference.plan_ref`); default: triton on a GPU, torch on the CPU (the
            kernels run there only under Triton's interpreter, far too slowly for a search).

    The tensors stay in memory: float32 on the CPU, float16 on a GPU (what the kernels take).
    The exact outputs of the row subsets are computed here, once.
    """

    def __init__(
        self,
        samples: Sequence[Any],
        *,
        layers: Sequence[int] | None = None,
        device: str = "cpu",
        rows_per_layer: int = DEFAULT_ROWS_PER_LAYER,
        seed: int = 0,
        plan_backend: str | None = None,
    ) -> None:
        import torch

        from sampleattn.reference import attention_rows_ref

        if plan_backend not in (None, "triton", "torch"):
            raise ValueError(f"plan_backend={plan_backend!r}; choose 'triton' or 'torch'")
        if not samples:
            raise ValueError("no calibration sample to evaluate on")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.plan_backend = plan_backend or ("triton" if self.cuda else "torch")
        self.layers = list(layers) if layers is not None else list(samples[0].layers)
        dtype = torch.float16 if self.cuda else torch.float32
        # data[s][layer] = (q, k, v, rows, exact)
        self.data: list[dict[int, tuple]] = []
        for s_index, sample in enumerate(samples):
            per_layer: dict[int, tuple] = {}
            for layer in self.layers:
                t = sample.layer(layer, dtype=dtype, device=self.device)
                q, k, v = t["q"], t["k"], t["v"]
                seqlen = q.shape[1]
                gen = torch.Generator().manual_seed(hash((seed, s_index, layer)) & 0x7FFFFFFF)
                n_rows = min(rows_per_layer, seqlen)
                rows = torch.randperm(seqlen, generator=gen)[:n_rows].sort().values.to(self.device)
                exact = attention_rows_ref(q, k, v, rows)  # (1, n_rows, Hq, D) fp32
                per_layer[layer] = (q, k, v, rows, exact)
            self.data.append(per_layer)
        q0, k0, _, _, _ = self.data[0][self.layers[0]]
        self.seqlen_q, self.seqlen_k = q0.shape[1], k0.shape[1]
        self.nheads_q, self.nheads_kv, self.head_dim = q0.shape[2], k0.shape[2], q0.shape[3]
        self.dense_ms = self._dense_ms()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(seqlen, nheads_q, nheads_kv, head_dim) of the calibration tensors."""
        return self.seqlen_q, self.nheads_q, self.nheads_kv, self.head_dim

    def _dense_ms(self) -> float:
        """Time of one dense SDPA call at the calibration shape (measured on this device)."""
        from sampleattn.attention import dense_attention
        from sampleattn.timing import wall_ms

        q, k, v, _, _ = self.data[0][self.layers[0]]
        if self.cuda:
            return measure_cuda_ms(lambda: dense_attention(q, k, v))
        return wall_ms(lambda: dense_attention(q, k, v), warmup=1, repeat=3)

    def _plan(self, q, k, config, heads):
        if self.plan_backend == "triton":
            from sampleattn.planning import plan

            return plan(q, k, config, heads=heads)
        from sampleattn.reference import plan_ref

        return plan_ref(q, k, config, heads=heads)

    def evaluate(self, profile: ModelAttentionProfile, *, time_layers: bool = True) -> TrialResult:
        """Evaluate ``profile`` on every layer and sample; see the module docstring."""
        import torch

        from sampleattn.reference import attention_rows_ref

        layers: dict[int, LayerMetrics] = {}
        for layer in self.layers:
            config = profile.layer_config(layer)
            heads = profile.head_overrides(layer)
            if self.seqlen_k < config.dense_below:
                layers[layer] = LayerMetrics(rel_error=0.0, retained_mean=1.0, retained_min=1.0, density=1.0,
                                             latency_ms=self.dense_ms, dense_latency_ms=self.dense_ms, dense=True)
                continue
            errors, r_mean, r_min, density, cost = [], [], [], [], []
            for per_layer in self.data:
                q, k, v, rows, exact = per_layer[layer]
                with torch.no_grad():
                    plan = self._plan(q, k, config, heads)
                    approx = attention_rows_ref(q, k, v, rows, plan=plan)
                err = (torch.linalg.vector_norm(approx - exact) / torch.linalg.vector_norm(exact).clamp(min=1e-30))
                errors.append(float(err))
                r_mean.append(float(plan.retained_mean.mean()))
                r_min.append(float(plan.retained_min.min()))
                density.append(plan.mean_density)
                cost.append(config.selection.estimation_cost(config, plan))
            for name, values in (("rel_error", errors), ("density", density)):
                bad = [x for x in values if not math.isfinite(x)]
                if bad:
                    raise FloatingPointError(f"layer {layer}: {name} is not finite ({bad[0]}) for {config}")
            dens = statistics.fmean(density)
            if self.cuda and time_layers:
                q, k, v, _, _ = self.data[0][layer]
                latency = self._sparse_cuda_ms(q, k, v, config, heads)
            else:
                latency = estimate_sparse_ms(self.dense_ms, dens, statistics.fmean(cost))
            layers[layer] = LayerMetrics(
                rel_error=statistics.fmean(errors), retained_mean=statistics.fmean(r_mean),
                retained_min=min(r_min), density=dens, latency_ms=latency, dense_latency_ms=self.dense_ms,
            )
        return self.summarize(layers)

    def _sparse_cuda_ms(self, q, k, v, config, heads) -> float:
        from sampleattn.attention import sample_attention

        return measure_cuda_ms(lambda: sample_attention(q, k, v, config, heads=heads, backend="triton"))

    def summarize(self, layers: dict[int, LayerMetrics]) -> TrialResult:
        """Aggregate per-layer metrics into a `TrialResult` (means; min of mins; sums of times)."""
        values = list(layers.values())
        return TrialResult(
            rel_error=statistics.fmean(m.rel_error for m in values),
            rel_error_max=max(m.rel_error for m in values),
            retained_mass_mean=statistics.fmean(m.retained_mean for m in values),
            retained_mass_min=min(m.retained_min for m in values),
            density=statistics.fmean(m.density for m in values),
            latency_ms=sum(m.latency_ms for m in values),
            dense_latency_ms=sum(m.dense_latency_ms for m in values),
            latency_measured=self.cuda,
            layers=dict(layers),
        )


# ------------------------------------------------------------------------------------------ model


class ModelEvaluator:
    """The model-level objective: logits of a prefill with the trial's profile vs full attention.

    Args:
        model: the loaded model (transformers, attention through ``AttentionInterface``).
        samples: real calibration samples (with ``input_ids`` (S,), ``logits`` (n, vocab) fp32 and
            ``logit_positions`` (n,) of the full-attention run).
        device: where the model runs.

    `evaluate(profile)` returns ``{"kl_divergence": mean over samples and positions of
    KL(p_full || p_sparse) in nats, "top1_agreement": fraction of positions whose argmax agrees}``.
    """

    def __init__(self, model: Any, samples: Sequence[Any], *, device: str = "cpu") -> None:
        if any(getattr(s, "synthetic", False) for s in samples):
            raise ValueError("--objective model needs real calibration text (synthetic samples have no logits)")
        self.model = model
        self.device = device
        self.samples = [
            (s.input_ids.to(device), s.logits.float().to(device), s.logit_positions.to(device)) for s in samples
        ]

    def evaluate(self, profile: ModelAttentionProfile, *, geometry=None) -> dict[str, float]:
        import torch

        from sampleattn.integrations.transformers import patch_model
        from sampleattn.operator import SampleAttention

        backend = "triton" if str(self.device).startswith("cuda") else "torch"
        attn = SampleAttention(profile, geometry=geometry, backend=backend)
        kls, agree = [], []
        with torch.no_grad(), patch_model(self.model, attn):
            for input_ids, ref_logits, positions in self.samples:
                out = self.model(input_ids.view(1, -1), use_cache=False)
                logits = out.logits[0, positions].float()
                ref_logp = torch.log_softmax(ref_logits, dim=-1)
                logp = torch.log_softmax(logits, dim=-1)
                kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # (n,)
                kls.append(float(kl.mean()))
                agree.append(float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()))
        kl_mean = max(0.0, statistics.fmean(kls))
        if not math.isfinite(kl_mean):
            raise FloatingPointError("the KL divergence of the logits is not finite")
        return {"kl_divergence": kl_mean, "top1_agreement": statistics.fmean(agree)}
