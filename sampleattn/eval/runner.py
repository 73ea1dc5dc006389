"""The accuracy evaluation: fidelity against full attention and needle in a haystack.

For each input (an essays window for fidelity, a needle prompt for retrieval) every method runs
on the same model through `sampleattn.integrations.transformers.patch_model`:

1. ``full``: the model's own SDPA attention (the reference);
2. ``sample_attention a=<alpha>``: SampleAttention with every layer sparse (``dense_below=0``),
   the paper's rule (``window_ratio``, ``sample_ratio``), for each alpha; its per-layer densities
   on this input are recorded;
3. ``profile``: the tuned profile from a profile store (`SampleAttention.from_profile`), as tuned;
4. each baseline ``<name> ~a=<alpha>``, with per-layer target densities equal to what
   SampleAttention at that alpha measured on the same input (matched density);
5. ``oracle a=<alpha>``: the unstructured per-row best (its own density);
6. ``pooled a=<alpha>`` and ``rescored a=<alpha>`` (with ``estimator=True``): the prototype
   estimators of `sampleattn.eval.estimator` (re-scored with ``candidate_alpha=0.999``).

Results are rows (dicts) collected in `EvalResult`; `sampleattn.eval.report` writes them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from .metrics import compare_logits
from .needle import haystack_ids, needle_prompt, score_answer

__all__ = ["EvalResult", "EvalSettings", "MethodSpec", "run_eval"]

BASELINES = ("window", "streamingllm", "bigbird", "vertical_slash")


@dataclass
class EvalSettings:
    """What to evaluate (the CLI's options; see ``python -m sampleattn.eval --help``)."""

    model: str = "smollm2-135m"
    model_path: str | None = None
    lengths: list[int] = field(default_factory=lambda: [2048])
    samples: int = 1
    needle_lengths: list[int] = field(default_factory=lambda: [1024, 2048])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    alphas: list[float] = field(default_factory=lambda: [0.8, 0.9, 0.95])
    window_ratio: float = 0.08
    sample_ratio: float = 0.05
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    match_alphas: list[float] | None = None  # None: every alpha
    oracle_alphas: list[float] = field(default_factory=lambda: [0.95, 0.99])
    estimator: bool = False
    estimator_pool: int = 64
    profile_store: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "auto"
    seed: int = 0
    max_new_tokens: int = 10
    max_mask_length: int = 8192  # dense-mask methods (vertical-slash, oracle) up to this length
    rope_scaling: str = "yarn"
    tasks: list[str] = field(default_factory=lambda: ["fidelity", "needle"])
    needle_methods: list[str] | None = None  # families run on the needle task (None: all)

    def matched(self) -> list[float]:
        return list(self.alphas if self.match_alphas is None else self.match_alphas)


@dataclass(frozen=True)
class MethodSpec:
    """One method of the evaluation: ``build(targets)`` gives its operator (None: full attention).

    ``targets`` is the per-layer density of ``matched_to`` on the same input (baselines only).
    """

    name: str
    family: str
    alpha: float | None
    build: Callable[[dict[int, float] | None], Any]
    matched_to: str | None = None
    mask_based: bool = False


@dataclass
class EvalResult:
    """Rows of one evaluation run and its metadata (``meta``: settings, versions, date)."""

    meta: dict[str, Any]
    fidelity: list[dict[str, Any]] = field(default_factory=list)
    needle: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "fidelity": self.fidelity, "needle": self.needle}


def sa_name(alpha: float) -> str:
    return f"sample_attention a={alpha:g}"


def method_specs(settings: EvalSettings, *, profile_operator: Any = None) -> list[MethodSpec]:
    """The methods in run order (a method's density target always runs before it)."""
    from sampleattn import SampleAttention, SampleAttentionConfig
    from sampleattn import baselines as bl

    backend = settings.backend
    specs = [MethodSpec("full", "full", None, lambda _t: None)]
    for alpha in settings.alphas:
        cfg = SampleAttentionConfig(alpha=alpha, window_ratio=settings.window_ratio,
                                    sample_ratio=settings.sample_ratio, dense_below=0)
        specs.append(MethodSpec(sa_name(alpha), "sample_attention", alpha,
                                lambda _t, cfg=cfg: SampleAttention(cfg, backend=backend)))
    if profile_operator is not None:
        specs.append(MethodSpec("profile", "profile", None, lambda _t: profile_operator))
    makers = {
        "window": lambda t: bl.WindowBaseline(t, backend=backend),
        "streamingllm": lambda t: bl.StreamingLLMBaseline(t, backend=backend),
        "bigbird": lambda t: bl.BigBirdBaseline(t, backend=backend, seed=settings.seed),
        "vertical_slash": lambda t: bl.VerticalSlashBaseline(t),
    }
    for name in settings.baselines:
        if name not in makers:
            raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    for alpha in settings.matched():
        if alpha not in settings.alphas:
            raise ValueError(f"match alpha {alpha} is not among the alphas {settings.alphas}")
        for name in settings.baselines:
            specs.append(MethodSpec(f"{name} ~a={alpha:g}", name, alpha, makers[name],
                                    matched_to=sa_name(alpha), mask_based=name == "vertical_slash"))
    for alpha in settings.oracle_alphas:
        specs.append(MethodSpec(f"oracle a={alpha:g}", "oracle", alpha,
                                lambda _t, a=alpha: bl.OracleBaseline(a), mask_based=True))
    if settings.estimator:
        from .estimator import PooledSampleAttention, RescoredSampleAttention

        for alpha in settings.alphas:
            specs.append(MethodSpec(
                f"pooled a={alpha:g}", "pooled", alpha,
                lambda _t, a=alpha: PooledSampleAttention(
                    alpha=a, window_ratio=settings.window_ratio, sample_ratio=settings.sample_ratio,
                    pool=settings.estimator_pool, backend=backend)))
        for alpha in settings.alphas:  # dense stage B in the prototype: a dense-mask-sized method
            specs.append(MethodSpec(
                f"rescored a={alpha:g}", "rescored", alpha,
                lambda _t, a=alpha: RescoredSampleAttention(
                    alpha=a, candidate_alpha=0.999, window_ratio=settings.window_ratio,
                    sample_ratio=settings.sample_ratio, backend=backend), mask_based=True))
    return specs


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


class _ModelCache:
    """Loads the model once per RoPE setting (lengths beyond the trained context need scaling)."""

    def __init__(self, settings: EvalSettings, log: Callable[[str], None], preloaded=None) -> None:
        self.settings = settings
        self.log = log
        self.key: str | None = None
        self.model = self.tokenizer = None
        if preloaded is not None:
            from sampleattn.tuner.catalog import get_model_spec
            from sampleattn.tuner.models import rope_scaling_for

            spec = get_model_spec(settings.model)
            self.model, self.tokenizer = preloaded
            self.key = repr(rope_scaling_for(spec, None, settings.rope_scaling))

    def get(self, length: int):
        from sampleattn.tuner.catalog import get_model_spec
        from sampleattn.tuner.models import load_model, rope_scaling_for

        spec = get_model_spec(self.settings.model)
        scaling = rope_scaling_for(spec, length, self.settings.rope_scaling)
        key = repr(scaling)
        if key != self.key:
            self.model = None
            if self.settings.device.startswith("cuda"):
                torch.cuda.empty_cache()
            t0 = time.time()
            self.model, self.tokenizer = load_model(
                spec, model_path=self.settings.model_path, device=self.settings.device,
                dtype=getattr(torch, self.settings.dtype), max_length=length if scaling else None,
                rope_scaling=self.settings.rope_scaling)
            self.key = key
            self.log(f"loaded {spec.name} (rope scaling {scaling}) in {time.time() - t0:.1f}s")
        return self.model, self.tokenizer, scaling


def _run(model, spec: MethodSpec, operator, fn: Callable[[], Any]):
    """Run ``fn`` with the model patched by ``operator`` (full attention for None)."""
    from sampleattn.integrations.transformers import patch_model

    if operator is None:
        return fn(), {}
    with patch_model(model, operator, record=True) as handle:
        result = fn()
    return result, handle.densities()


def _mean_density(per_layer: dict[int, float]) -> float:
    return sum(per_layer.values()) / len(per_layer) if per_layer else 1.0


def run_eval(settings: EvalSettings, *, log: Callable[[str], None] = print,
             model: Any = None, tokenizer: Any = None,
             on_row: Callable[[EvalResult], None] | None = None) -> EvalResult:
    """Run the evaluation described by ``settings``; returns every measured row.

    ``model``/``tokenizer``: an already loaded model without RoPE scaling (used for the lengths
    within its trained context; longer lengths load their own). ``on_row(result)`` is called
    after every measured row (the CLI writes the results so far, so a cut-off run keeps them).
    """
    from sampleattn.tuner.calibration import calibration_windows, essays_text

    meta = {"settings": asdict(settings), "versions": _versions(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    result = EvalResult(meta)
    models = _ModelCache(settings, log, (model, tokenizer) if model is not None else None)
    profile_operator = None
    if settings.profile_store:
        from sampleattn import SampleAttention

        try:
            profile_operator = SampleAttention.from_profile(settings.model, None, settings.profile_store,
                                                            backend=settings.backend)
            meta["profile"] = repr(profile_operator)
        except Exception as exc:  # noqa: BLE001 - reported, the rest of the evaluation runs
            log(f"no tuned profile: {exc}")
            meta["profile"] = f"unavailable: {exc}"
    specs = method_specs(settings, profile_operator=profile_operator)
    text = essays_text()
    device = settings.device

    def run_methods(length: int, kind: str, body: Callable[[Any, MethodSpec], Any],
                    record: Callable[[MethodSpec, Any, dict[int, float], float], None]) -> None:
        model = models.get(length)[0]
        measured: dict[str, dict[int, float]] = {}
        wanted = settings.needle_methods if kind == "needle" else None
        for spec in specs:
            if spec.mask_based and length > settings.max_mask_length:
                continue
            if wanted is not None and spec.family not in wanted and spec.name not in wanted:
                if not any(other.matched_to == spec.name for other in specs
                           if other.family in wanted):
                    continue
            targets = measured.get(spec.matched_to) if spec.matched_to else None
            if spec.matched_to and not targets:
                continue
            operator = spec.build(targets)
            t0 = time.time()
            with torch.no_grad():
                out, densities = _run(model, spec, operator, lambda: body(model, spec))
            measured[spec.name] = densities
            record(spec, out, densities, time.time() - t0)
            if on_row is not None:
                on_row(result)

    if "fidelity" in settings.tasks:
        for length in settings.lengths:
            tokenizer = models.get(length)[1]
            windows = calibration_windows(tokenizer, text, length, settings.samples, settings.seed)
            for index, window in enumerate(windows):
                ids = window.view(1, -1).to(device)
                full_logits: dict[str, torch.Tensor] = {}

                def body(model, spec, ids=ids):
                    return model(ids).logits

                def record(spec, logits, densities, seconds, ids=ids, index=index, length=length,
                           full_logits=full_logits):
                    if spec.family == "full":
                        full_logits["x"] = logits
                    stats = compare_logits(full_logits["x"], logits, ids)
                    row = {"length": length, "sample": index, "method": spec.name, "family": spec.family,
                           "alpha": spec.alpha, "matched_to": spec.matched_to,
                           "density": _mean_density(densities), "density_per_layer": densities,
                           "seconds": round(seconds, 2), **asdict(stats)}
                    result.fidelity.append(row)
                    log(f"fidelity L={length} #{index} {spec.name:28s} density {row['density']:.3f} "
                        f"KL {stats.kl_sum / stats.tokens:.4f} top1 {stats.top1_sum / stats.tokens:.3f} "
                        f"ppl {math.exp(stats.nll_sum / stats.nll_tokens):.3f} ({seconds:.1f}s)")

                run_methods(length, "fidelity", body, record)
                del full_logits

    if "needle" in settings.tasks:
        for length in settings.needle_lengths:
            model, tokenizer, _ = models.get(length)
            hay = haystack_ids(tokenizer, text, length)
            for depth in settings.depths:
                prompt = needle_prompt(tokenizer, hay, length, depth, seed=settings.seed)
                ids = prompt.input_ids.to(device)

                def body(model, spec, ids=ids, tokenizer=tokenizer):
                    out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=settings.max_new_tokens, do_sample=False,
                                         pad_token_id=tokenizer.eos_token_id)
                    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

                def record(spec, answer, densities, seconds, prompt=prompt, length=length, depth=depth):
                    ok = score_answer(answer, prompt.answer)
                    result.needle.append({
                        "length": length, "depth": depth, "method": spec.name, "family": spec.family,
                        "alpha": spec.alpha, "matched_to": spec.matched_to, "correct": bool(ok),
                        "answer": answer, "expected": prompt.answer, "density": _mean_density(densities),
                        "seconds": round(seconds, 2)})
                    log(f"needle L={length} depth {depth:.2f} {spec.name:28s} "
                        f"density {_mean_density(densities):.3f} {'ok  ' if ok else 'MISS'} {answer!r}")

                run_methods(length, "needle", body, record)
    return result
