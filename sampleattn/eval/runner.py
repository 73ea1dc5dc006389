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

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from .metrics import compare_logits
from .needle import haystack_ids, needle_prompt, score_answer

__all__ = ["Budget", "EvalResult", "EvalSettings", "MethodSpec", "SkipMethod", "method_specs",
           "rescored_available", "run_eval"]

BASELINES = ("window", "streamingllm", "bigbird", "vertical_slash")

#: Tiers of the run order (see the module docstring).
TIER_PRIMARY, TIER_ALPHAS, TIER_BASELINES, TIER_ORACLE, TIER_OTHER_BASELINES, TIER_PROTOTYPES = range(6)


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
    rescored_alphas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    candidate_alpha: float = 0.999
    rescore_stride: int = 1
    estimator: bool = False
    estimator_pool: int = 64
    profile: str | None = None  # a profile store (URL or path): the ``tuned`` row
    allow_synthetic: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "auto"
    seed: int = 0
    max_new_tokens: int = 10
    max_mask_length: int = 8192  # dense-mask methods (vertical-slash, oracle) up to this length
    rope_scaling: str = "yarn"
    tasks: list[str] = field(default_factory=lambda: ["fidelity", "needle"])
    needle_methods: list[str] | None = None  # families run on the needle task (None: all)
    secondary_depths: list[float] | None = None  # needle depths of tiers 1+ (None: all depths)
    primary_alpha: float = 0.95
    budget_s: float | None = None  # stop starting new work past this (see Budget)

    def matched(self) -> list[float]:
        return list(self.alphas if self.match_alphas is None else self.match_alphas)


class SkipMethod(Exception):
    """Raised by a `MethodSpec`'s build when the method cannot run on an input (the message is
    the reason, reported in ``meta["not_run"]``)."""


@dataclass(frozen=True)
class MethodSpec:
    """One method of the evaluation: ``build(targets, length)`` gives its operator (None: full
    attention) or raises `SkipMethod`.

    ``targets`` is the per-layer density of ``matched_to`` on the same input (baselines only);
    ``tier`` orders the run (0 first, see the module docstring).
    """

    name: str
    family: str
    alpha: float | None
    build: Callable[[dict[int, float] | None, int], Any]
    matched_to: str | None = None
    mask_based: bool = False
    tier: int = TIER_PRIMARY


@dataclass
class EvalResult:
    """Rows of one evaluation run and its metadata (``meta``: settings, versions, date)."""

    meta: dict[str, Any]
    fidelity: list[dict[str, Any]] = field(default_factory=list)
    needle: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "fidelity": self.fidelity, "needle": self.needle}


class Budget:
    """A wall-clock budget: `fits(seconds)` says whether work expected to take that long ends
    before ``start + seconds_total`` (``seconds_total`` None: no budget).

    ``start`` defaults to now; the CLI passes its process's start, so the budget covers the
    imports too. ``clock`` is `time.time` (a test passes its own).
    """

    def __init__(self, seconds_total: float | None, *, start: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.total = seconds_total
        self.clock = clock
        self.start = clock() if start is None else start

    def elapsed(self) -> float:
        return self.clock() - self.start

    def fits(self, expected_s: float) -> bool:
        return self.total is None or self.elapsed() + max(expected_s, 0.0) <= self.total


def sa_name(alpha: float) -> str:
    return f"sample_attention a={alpha:g}"


def rescored_name(alpha: float, candidate_alpha: float = 0.999, stride: int = 1) -> str:
    name = f"sample_attention_rescored a={alpha:g}"
    if candidate_alpha != 0.999:
        name += f" c={candidate_alpha:g}"
    if stride != 1:
        name += f" stride={stride}"
    return name


def rescored_available() -> bool:
    """Whether the operator has the re-scored selection (``SampleAttentionConfig.selection``)."""
    from sampleattn import SampleAttentionConfig

    return "selection" in SampleAttentionConfig.model_fields


def _is_dense_at(operator: Any, length: int) -> bool:
    """Whether a SampleAttention runs every layer dense at ``length`` keys (its ``dense_below``)."""
    geometry = getattr(operator, "geometry", None)
    layers = range(geometry.num_layers) if geometry is not None else [0]
    return all(length < operator.config_for(layer).dense_below for layer in layers)


class _TunedProfiles:
    """The ``tuned`` operator per length from a profile store (loaded once per length)."""

    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings
        self.cache: dict[int, tuple[Any, str | None]] = {}
        self.info: dict[int, dict[str, Any]] = {}

    def operator(self, length: int) -> Any:
        if length not in self.cache:
            self.cache[length] = self._load(length)
        operator, reason = self.cache[length]
        if reason is not None:
            raise SkipMethod(reason)
        return operator

    def _load(self, length: int) -> tuple[Any, str | None]:
        from sampleattn import SampleAttention

        s = self.settings
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                operator = SampleAttention.from_profile(s.model, length, store=s.profile,
                                                        allow_synthetic=s.allow_synthetic, backend=s.backend)
        except Exception as exc:  # noqa: BLE001 - reported as the row's reason, the rest runs
            self.info[length] = {"error": f"{type(exc).__name__}: {exc}"}
            return None, f"no tuned profile: {type(exc).__name__}: {exc}"
        record = operator.source
        info = {"profile_length": record.seq_len, "calibration": record.calibration_kind,
                "run": record.run, "config": operator.profile.model_dump(mode="json"),
                "warnings": [str(w.message) for w in caught]}
        self.info[length] = info
        if _is_dense_at(operator, length):
            return None, (f"the tuned profile (tuned at {record.seq_len}) runs every layer "
                          f"dense at {length} tokens (dense_below={operator.config_for(0).dense_below}): "
                          "it is full attention")
        return operator, None


def method_specs(settings: EvalSettings, *, tuned: _TunedProfiles | None = None) -> list[MethodSpec]:
    """The methods, sorted by tier (a method's density target always runs before it)."""
    from sampleattn import SampleAttention, SampleAttentionConfig
    from sampleattn import baselines as bl

    backend = settings.backend
    primary = settings.primary_alpha if settings.primary_alpha in settings.alphas else max(settings.alphas)

    def sa_tier(alpha: float) -> int:
        return TIER_PRIMARY if alpha == primary else TIER_ALPHAS

    specs = [MethodSpec("full", "full", None, lambda _t, _n: None)]
    for alpha in sorted(settings.alphas, key=lambda a: (a != primary, -a)):
        cfg = SampleAttentionConfig(alpha=alpha, window_ratio=settings.window_ratio,
                                    sample_ratio=settings.sample_ratio, dense_below=0)
        specs.append(MethodSpec(sa_name(alpha), "sample_attention", alpha,
                                lambda _t, _n, cfg=cfg: SampleAttention(cfg, backend=backend), tier=sa_tier(alpha)))
    for alpha in sorted(settings.rescored_alphas, key=lambda a: (a != primary, -a)):
        def build_rescored(_t, _n, a=alpha):
            if not rescored_available():
                raise SkipMethod("this sampleattn has no SampleAttentionConfig.selection (the re-scored "
                                 "selection is not in the operator yet)")
            cfg = SampleAttentionConfig(alpha=a, window_ratio=settings.window_ratio,
                                        sample_ratio=settings.sample_ratio, dense_below=0, selection="rescored",
                                        candidate_alpha=settings.candidate_alpha,
                                        rescore_stride=settings.rescore_stride)
            return SampleAttention(cfg, backend=backend)

        specs.append(MethodSpec(rescored_name(alpha, settings.candidate_alpha, settings.rescore_stride),
                                "sample_attention_rescored", alpha, build_rescored, tier=TIER_ALPHAS))
    if settings.profile:
        tuned = tuned or _TunedProfiles(settings)
        specs.append(MethodSpec("tuned", "tuned", None, lambda _t, n: tuned.operator(n), tier=TIER_ALPHAS))
    makers = {
        "window": lambda t, _n: bl.WindowBaseline(t, backend=backend),
        "streamingllm": lambda t, _n: bl.StreamingLLMBaseline(t, backend=backend),
        "bigbird": lambda t, _n: bl.BigBirdBaseline(t, backend=backend, seed=settings.seed),
        "vertical_slash": lambda t, _n: bl.VerticalSlashBaseline(t),
    }
    for name in settings.baselines:
        if name not in makers:
            raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    for alpha in sorted(settings.matched(), key=lambda a: (a != primary, -a)):
        if alpha not in settings.alphas:
            raise ValueError(f"match alpha {alpha} is not among the alphas {settings.alphas}")
        for name in settings.baselines:
            specs.append(MethodSpec(f"{name} ~a={alpha:g}", name, alpha, makers[name],
                                    matched_to=sa_name(alpha), mask_based=name == "vertical_slash",
                                    tier=TIER_BASELINES if alpha == primary else TIER_OTHER_BASELINES))
    for alpha in settings.oracle_alphas:
        specs.append(MethodSpec(f"oracle a={alpha:g}", "oracle", alpha,
                                lambda _t, _n, a=alpha: bl.OracleBaseline(a), mask_based=True, tier=TIER_ORACLE))
    if settings.estimator:
        from .estimator import PooledSampleAttention, RescoredSampleAttention

        for alpha in settings.alphas:
            specs.append(MethodSpec(
                f"pooled a={alpha:g}", "pooled", alpha,
                lambda _t, _n, a=alpha: PooledSampleAttention(
                    alpha=a, window_ratio=settings.window_ratio, sample_ratio=settings.sample_ratio,
                    pool=settings.estimator_pool, backend=backend), tier=TIER_PROTOTYPES))
        for alpha in settings.rescored_alphas:  # dense stage B in the prototype: a dense-mask-sized method
            specs.append(MethodSpec(
                f"rescored_proto a={alpha:g}", "rescored_proto", alpha,
                lambda _t, _n, a=alpha: RescoredSampleAttention(
                    alpha=a, candidate_alpha=settings.candidate_alpha, window_ratio=settings.window_ratio,
                    sample_ratio=settings.sample_ratio, backend=backend), mask_based=True, tier=TIER_PROTOTYPES))
    return sorted(specs, key=lambda s: s.tier)  # stable: the order above within a tier


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
    """One model per RoPE setting (lengths beyond the trained context need scaling), all kept:
    the tiers come back to every length.

    For the llama and qwen2 families a scaled model is derived from the first loaded one (its
    config with `configure_rope`, the same weights) instead of reading and de-quantising the
    weights again: the same model as ``load_model(max_length=...)``, checked by
    ``tests/integrations/test_eval.py``.
    """

    DERIVABLE = ("llama", "qwen2")

    def __init__(self, settings: EvalSettings, log: Callable[[str], None], preloaded=None) -> None:
        from sampleattn.models.catalog import get_model_spec

        self.settings = settings
        self.log = log
        self.spec = get_model_spec(settings.model)
        self.models: dict[str, tuple[Any, Any, Any]] = {}
        self.load_seconds: list[float] = []
        if preloaded is not None:
            model, tokenizer = preloaded
            self.models[repr(self._scaling(None))] = (model, tokenizer, None)

    def _scaling(self, length: int | None):
        from sampleattn.models.loading import rope_scaling_for

        return rope_scaling_for(self.spec, length, self.settings.rope_scaling)

    def loaded(self, length: int) -> bool:
        return repr(self._scaling(length)) in self.models

    def expected_load_s(self, length: int) -> float:
        return 0.0 if self.loaded(length) else max(self.load_seconds, default=0.0)

    def tokenizer(self, length: int):
        if self.models:
            return next(iter(self.models.values()))[1]
        return self.get(length)[1]

    def get(self, length: int):
        from sampleattn.models.loading import load_model

        scaling = self._scaling(length)
        key = repr(scaling)
        if key not in self.models:
            t0 = time.time()
            base = next(iter(self.models.values()), None)
            if base is not None and scaling is not None and self.spec.family in self.DERIVABLE:
                model, tokenizer, how = self._derive(base[0], length), base[1], "derived from the loaded weights"
            else:
                model, tokenizer = load_model(
                    self.spec, model_path=self.settings.model_path, device=self.settings.device,
                    dtype=getattr(torch, self.settings.dtype), max_length=length if scaling else None,
                    rope_scaling=self.settings.rope_scaling)
                how = "loaded"
            self.models[key] = (model, tokenizer, scaling)
            self.load_seconds.append(time.time() - t0)
            self.log(f"{how} {self.spec.name} (rope scaling {scaling}) in {time.time() - t0:.1f}s")
        return self.models[key]

    def _derive(self, base: Any, length: int) -> Any:
        """``base`` with the RoPE scaling of ``length``: a new model of the scaled config holding
        base's weights (the rotary tables are buffers of the new config, not copied)."""
        from transformers import AutoModelForCausalLM

        from sampleattn.models.loading import configure_rope

        config = copy.deepcopy(base.config)
        configure_rope(config, self.spec, max_length=length, method=self.settings.rope_scaling)
        dtype = next(base.parameters()).dtype
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        state = {k: v for k, v in base.state_dict().items() if "rotary_emb" not in k}
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if "rotary_emb" not in k and k != "lm_head.weight"]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"deriving the scaled model: missing {missing[:5]}, unexpected "
                               f"{list(result.unexpected_keys)[:5]}")
        model.tie_weights()
        return model.to(self.settings.device).eval()


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
    models = _ModelCache(settings, log, (model, tokenizer) if model is not None else None)
    tuned = _TunedProfiles(settings) if settings.profile else None
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
                t0 = time.time()
                with torch.no_grad():
                    if inp.task == "fidelity":
                        out, densities = _run(model, operator, lambda: model(inp.ids).logits)
                    else:
                        out, densities = _run(model, operator, lambda: tok.decode(model.generate(
                            inp.ids, attention_mask=torch.ones_like(inp.ids), max_new_tokens=settings.max_new_tokens,
                            do_sample=False, pad_token_id=tok.eos_token_id)[0, inp.ids.shape[1]:],
                            skip_special_tokens=True))
                took = time.time() - t0
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
