"""The methods of the accuracy evaluation: SampleAttention at each alpha, the re-scored rule, the
tuned profile, the baselines matched in density, the oracle and the prototypes, each a
`MethodSpec` with its tier of the run order (see `sampleattn.eval.runner`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

from .settings import BASELINES, EvalSettings

__all__ = ["MethodSpec", "SkipMethod", "TunedProfiles", "block_name", "method_specs", "rescored_available", "rescored_name",
           "sa_name"]

#: Tiers of the run order (see `sampleattn.eval.runner`).
TIER_PRIMARY, TIER_ALPHAS, TIER_BASELINES, TIER_ORACLE, TIER_OTHER_BASELINES, TIER_PROTOTYPES = range(6)


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


def sa_name(alpha: float) -> str:
    return f"sample_attention a={alpha:g}"


def block_name(beta: float, window_ratio: float, share_power: int = 1, block_size: int = 128,
               stripes_alpha: float | None = None, max_stripes: int | None = None) -> str:
    return (f"block b={beta:g} w={window_ratio:g}" + (f" p={share_power}" if share_power != 1 else "")
            + (f" kb={block_size}" if block_size != 128 else "")
            + (f" stripes a={stripes_alpha:g}" if stripes_alpha is not None else "")
            + (f" max={max_stripes}" if max_stripes is not None else ""))


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


class TunedProfiles:
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


def method_specs(settings: EvalSettings, *, tuned: TunedProfiles | None = None) -> list[MethodSpec]:
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
    for beta in settings.block_betas:
        from sampleattn.rules import BlockRule

        stripes = settings.block_stripes_alpha is not None
        # the stripe columns are the paper's: its alpha and sampled rows, only when they are kept
        sampling = {"alpha": settings.block_stripes_alpha, "sample_ratio": settings.sample_ratio} if stripes else {}
        cfg = SampleAttentionConfig(window_ratio=settings.block_window_ratio, dense_below=0,
                                    block_m=settings.block_size, **sampling,
                                    selection=BlockRule(beta=beta, row_stride=settings.block_row_stride,
                                                        share_power=settings.block_share_power,
                                                        key_block=settings.block_size, stripes=stripes,
                                                        max_stripes=settings.block_max_stripes))
        name = block_name(beta, settings.block_window_ratio, settings.block_share_power, settings.block_size,
                          settings.block_stripes_alpha, settings.block_max_stripes)
        specs.append(MethodSpec(name, "block_rule", None,
                                lambda _t, _n, cfg=cfg: SampleAttention(cfg, backend=backend), tier=TIER_ALPHAS))
    if settings.profile:
        tuned = tuned or TunedProfiles(settings)
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
