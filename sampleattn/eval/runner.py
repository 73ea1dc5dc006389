"""The accuracy evaluation: fidelity against full attention and needle in a haystack.

For each input (an essays window for fidelity, a needle prompt for retrieval) every method runs
on the same model through `sampleattn.integrations.transformers.patch_model`:

1. ``full``: the model's own SDPA attention (the reference);
2. ``sample_attention a=<alpha>``: SampleAttention with every layer sparse (``dense_below=0``),
   the paper's rule (``window_ratio``, ``sample_ratio``), for each alpha; its per-layer densities
   on this input are recorded;
3. ``sample_attention_rescored a=<alpha>``: the operator's re-scored selection
   (``SampleAttentionConfig(selection="rescored", candidate_alpha, rescore_stride)``), same
   window and sampling, its own density;
4. ``tuned``: the profile a store holds for the input's length
   (``SampleAttention.from_profile(model, length, store)``), as tuned. Not run where the store
   has no profile or the profile runs every layer dense at that length: the reason is listed in
   ``meta["not_run"]``;
5. each baseline ``<name> ~a=<alpha>``, with per-layer target densities equal to what
   SampleAttention (the paper's rule) at that alpha measured on the same input (matched density);
6. ``oracle a=<alpha>``: the unstructured per-row best (its own density);
7. with ``estimator=True``, the prototypes of `sampleattn.eval.estimator`: ``pooled a=<alpha>``
   and ``rescored_proto a=<alpha>`` (dense stage B, so up to ``max_mask_length``).

**Order and time budget.** The work runs in tiers, most important first, each tier over every
input (lengths ascending): 0. full attention and SampleAttention at the primary alpha (0.95);
1. the other alphas, the re-scored rows, the tuned profile; 2. the baselines matched to the
primary alpha; 3. the oracle; 4. the baselines matched to the other alphas; 5. the prototypes.
Tiers 1 and up of the needle run only at ``secondary_depths`` when set. With a budget
(`Budget`), a method whose expected time (its own last time at that length, else the slowest
method at that length) would end past the budget is not started; everything not run is counted in
``meta["not_run"]``. Every model (one per RoPE setting) and every fidelity input's full-attention
logits stay in memory across tiers.

Results are rows (dicts) collected in `EvalResult`; `sampleattn.eval.report` writes them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from .methods import (
    TIER_PRIMARY,
    MethodSpec,
    SkipMethod,
    TunedProfiles,
    method_specs,
    rescored_available,
)
from .metrics import compare_logits
from .model_cache import ModelCache
from .needle import haystack_ids, needle_prompt, score_answer
from .settings import BASELINES, Budget, EvalResult, EvalSettings

__all__ = ["BASELINES", "Budget", "EvalResult", "EvalSettings", "MethodSpec", "ModelCache", "SkipMethod",
           "TunedProfiles", "method_specs", "rescored_available", "run_eval"]


def _versions() -> dict[str, str | None]:
    import platform

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "triton", "sampleattn"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", None)
        except Exception:  # noqa: BLE001 - absent optional package
            out[name] = None
    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


def _run(model, operator, fn: Callable[[], Any]):
    """Run ``fn`` with the model patched by ``operator`` (full attention for None); return its
    result and the prefill density per layer (1.0 for the layers the operator ran dense)."""
    from sampleattn.integrations.transformers import patch_model

    if operator is None:
        return fn(), {}
    with patch_model(model, operator, record=True) as handle:
        result = fn()
    by_layer: dict[int, list[float]] = {}
    for r in handle.records:
        if r.path in ("sparse", "operator-dense"):
            by_layer.setdefault(r.layer, []).append(r.density)
    return result, {layer: sum(v) / len(v) for layer, v in sorted(by_layer.items())}


def _mean_density(per_layer: dict[int, float]) -> float:
    return sum(per_layer.values()) / len(per_layer) if per_layer else 1.0


@dataclass
class _Input:
    """One input of the evaluation and what the tiers share about it."""

    task: str  # "fidelity" or "needle"
    length: int
    ids: torch.Tensor
    sample: int | None = None  # fidelity: the window's index
    depth: float | None = None  # needle: the needle's depth
    prompt: Any = None  # needle: the NeedlePrompt
    full_logits: torch.Tensor | None = None  # fidelity: full attention's logits
    measured: dict[str, dict[int, float]] = field(default_factory=dict)  # method -> density per layer

    def where(self) -> dict[str, Any]:
        key = {"sample": self.sample} if self.task == "fidelity" else {"depth": self.depth}
        return {"task": self.task, "length": self.length, **key}


def run_eval(settings: EvalSettings, *, log: Callable[[str], None] = print,
             model: Any = None, tokenizer: Any = None,
             on_row: Callable[[EvalResult], None] | None = None,
             start: float | None = None, clock: Callable[[], float] = time.time,
             progress: bool = False) -> EvalResult:
    """Run the evaluation described by ``settings``; returns every measured row.

    ``progress``: a bar over the (input, method) runs with the time left (tqdm, on stderr); the
    ``log`` lines are then written above it. Skipped runs count as done at once.

    ``model``/``tokenizer``: an already loaded model without RoPE scaling (used for the lengths
    within its trained context; longer lengths get their own). ``on_row(result)`` is called
    after every measured row (the CLI writes the results so far, so a cut-off run keeps them).
    ``start``: when the budget (``settings.budget_s``) began (default: now); ``clock`` its clock.
    """
    from sampleattn.models.text import calibration_windows, essays_text

    budget = Budget(settings.budget_s, start=start, clock=clock)
    not_run: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"settings": asdict(settings), "versions": _versions(),
                            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "not_run": not_run}
    result = EvalResult(meta)
    models = ModelCache(settings, log, (model, tokenizer) if model is not None else None)
    tuned = TunedProfiles(settings) if settings.profile else None
    if tuned is not None:
        meta["tuned_profiles"] = tuned.info
    specs = method_specs(settings, tuned=tuned)
    text = essays_text()
    device = settings.device

    inputs: list[_Input] = []
    if "fidelity" in settings.tasks:
        for length in settings.lengths:
            windows = calibration_windows(models.tokenizer(length), text, length, settings.samples, settings.seed)
            inputs += [_Input("fidelity", length, w.view(1, -1).to(device), sample=i) for i, w in enumerate(windows)]
    if "needle" in settings.tasks:
        for length in settings.needle_lengths:
            tok = models.tokenizer(length)
            hay = haystack_ids(tok, text, length)
            for depth in settings.depths:
                prompt = needle_prompt(tok, hay, length, depth, seed=settings.seed)
                inputs.append(_Input("needle", length, prompt.input_ids.to(device), depth=depth, prompt=prompt))

    def selected(spec: MethodSpec, inp: _Input) -> bool:
        """Whether the settings ask for ``spec`` on ``inp`` at all."""
        if spec.mask_based and inp.length > settings.max_mask_length:
            return False
        if inp.task != "needle":
            return True
        if (spec.tier > TIER_PRIMARY and settings.secondary_depths is not None
                and not any(abs(inp.depth - d) < 1e-9 for d in settings.secondary_depths)):
            return False
        wanted = settings.needle_methods
        if wanted is None or spec.family in wanted or spec.name in wanted:
            return True
        return any(other.matched_to == spec.name for other in specs if other.family in wanted)

    seconds: dict[tuple[str, int, str], float] = {}

    def expected_s(spec: MethodSpec, inp: _Input) -> float:
        """Expected time of ``spec`` on ``inp``: its own last time at this length, else the
        slowest method at this length, else the slowest at the longest shorter length, scaled."""
        same = seconds.get((inp.task, inp.length, spec.name))
        if same is None:
            at_length = [t for (task, n, _), t in seconds.items() if task == inp.task and n == inp.length]
            if at_length:
                same = max(at_length)
            else:
                shorter = [(n, t) for (task, n, _), t in seconds.items() if task == inp.task and n < inp.length]
                if shorter:
                    n0 = max(n for n, _ in shorter)
                    same = max(t for n, t in shorter if n == n0) * (inp.length / n0) ** 1.5
        return (same or 0.0) + models.expected_load_s(inp.length)

    def skip(spec: MethodSpec, inp: _Input, reason: str) -> None:
        not_run.append({**inp.where(), "method": spec.name, "reason": reason})

    def record_fidelity(spec: MethodSpec, inp: _Input, logits: torch.Tensor, densities: dict[int, float],
                        took: float) -> None:
        if spec.family == "full":
            inp.full_logits = logits
        stats = compare_logits(inp.full_logits, logits, inp.ids)
        row = {"length": inp.length, "sample": inp.sample, "method": spec.name, "family": spec.family,
               "alpha": spec.alpha, "matched_to": spec.matched_to, "tier": spec.tier,
               "density": _mean_density(densities), "density_per_layer": densities,
               "seconds": round(took, 2), **asdict(stats)}
        result.fidelity.append(row)
        log(f"[{budget.elapsed():6.0f}s] fidelity L={inp.length} #{inp.sample} {spec.name:36s} density "
            f"{row['density']:.3f} KL {stats.kl_sum / stats.tokens:.4f} top1 {stats.top1_sum / stats.tokens:.3f} "
            f"ppl {math.exp(stats.nll_sum / stats.nll_tokens):.3f} ({took:.1f}s)")

    def record_needle(spec: MethodSpec, inp: _Input, answer: str, densities: dict[int, float],
                      took: float) -> None:
        ok = score_answer(answer, inp.prompt.answer)
        result.needle.append({
            "length": inp.length, "depth": inp.depth, "method": spec.name, "family": spec.family,
            "alpha": spec.alpha, "matched_to": spec.matched_to, "tier": spec.tier, "correct": bool(ok),
            "answer": answer, "expected": inp.prompt.answer, "density": _mean_density(densities),
            "seconds": round(took, 2)})
        log(f"[{budget.elapsed():6.0f}s] needle L={inp.length} depth {inp.depth:.2f} {spec.name:36s} "
            f"density {_mean_density(densities):.3f} {'ok  ' if ok else 'MISS'} {answer!r}")

    from tqdm.auto import tqdm

    tiers = [[s for s in specs if s.tier == tier] for tier in sorted({s.tier for s in specs})]
    total = sum(selected(spec, inp) for tier_specs in tiers for inp in inputs for spec in tier_specs)
    bar = tqdm(total=total, desc="evaluation", unit="run", disable=not progress, mininterval=2.0)
    if progress:
        caller_log = log

        def log(message: str) -> None:  # the caller's line above the bar, not through it
            with bar.external_write_mode():
                caller_log(message)

    for tier_specs in tiers:
        for inp in inputs:
            for spec in tier_specs:
                if not selected(spec, inp):
                    continue
                bar.update(1)  # counted when started: skips are instant, runs set the rate
                bar.set_postfix_str(f"{inp.task} {inp.length} {spec.name}", refresh=False)
                if inp.task == "fidelity" and spec.family != "full" and inp.full_logits is None:
                    skip(spec, inp, "full attention did not run on this input")
                    continue
                targets = inp.measured.get(spec.matched_to) if spec.matched_to else None
                if spec.matched_to and not targets:
                    skip(spec, inp, f"its density target ({spec.matched_to}) did not run on this input")
                    continue
                if not budget.fits(expected_s(spec, inp)):
                    skip(spec, inp, "time budget")
                    continue
                try:
                    operator = spec.build(targets, inp.length)
                except SkipMethod as exc:
                    skip(spec, inp, str(exc))
                    continue
                model, tok, _ = models.get(inp.length)
                t0 = budget.clock()  # the budget's clock: expected times and the budget agree
                with torch.no_grad():
                    if inp.task == "fidelity":
                        out, densities = _run(model, operator, lambda: model(inp.ids).logits)
                    else:
                        out, densities = _run(model, operator, lambda: tok.decode(model.generate(
                            inp.ids, attention_mask=torch.ones_like(inp.ids), max_new_tokens=settings.max_new_tokens,
                            do_sample=False, pad_token_id=tok.eos_token_id)[0, inp.ids.shape[1]:],
                            skip_special_tokens=True))
                took = budget.clock() - t0
                seconds[(inp.task, inp.length, spec.name)] = took
                inp.measured[spec.name] = densities
                (record_fidelity if inp.task == "fidelity" else record_needle)(spec, inp, out, densities, took)
                if on_row is not None:
                    on_row(result)
    bar.close()
    for inp in inputs:
        inp.full_logits = None
    budget_skips = sum(1 for r in not_run if r["reason"] == "time budget")
    meta["budget"] = {"budget_s": settings.budget_s, "elapsed_s": round(budget.elapsed(), 1),
                      "not_run_for_time": budget_skips}
    if budget_skips:
        log(f"time budget: {budget_skips} (input, method) runs not started")
    return result
