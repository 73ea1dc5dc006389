"""Pydantic schemas: the JSON columns of the store, the records it returns, the export format.

Everything written to a JSON column is validated by one of these models first, and every row
read back is validated again into a record (`ModelInfo`, `RunInfo`, `TrialRecord`,
`ProfileRecord`). Records carry names, never database ids, so that they read the same from any
store and make up the export file (`StoreExport`) as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    field_validator,
    model_validator,
)

from sampleattn.config import ModelAttentionProfile

__all__ = [
    "CalibrationInfo",
    "CalibrationKind",
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "EnvInfo",
    "ImportSummary",
    "ModelInfo",
    "ParamSpace",
    "ProfileRecord",
    "RunInfo",
    "RunStatus",
    "StoreExport",
    "TrialMetrics",
    "TrialRecord",
    "TrialState",
    "content_hash",
    "normalize_state",
    "search_space_from_distributions",
    "utcnow",
]

CalibrationKind = Literal["real", "synthetic"]
TrialState = Literal["running", "complete", "pruned", "failed"]
RunStatus = Literal["running", "complete", "failed", "interrupted"]
JsonScalar = str | int | float | bool | None

#: Environment metadata as `sampleattn.env.collect_env` returns it: a flat mapping.
EnvInfo = dict[str, JsonScalar]
_ENV = TypeAdapter(EnvInfo)

#: Name of the export format and the newest version this code reads and writes.
EXPORT_FORMAT = "sampleattn-profile-store"
EXPORT_FORMAT_VERSION = 1

_NAME = Field(min_length=1, max_length=128, pattern=r"^[^\s]+$")


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC (all timestamps in the store are UTC)."""
    return datetime.now(timezone.utc)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def normalize_state(state: Any) -> str:
    """Accept ``"complete"``, ``"COMPLETE"``, ``"fail"`` or an `optuna.trial.TrialState`."""
    name = getattr(state, "name", state)
    text = str(name).strip().lower()
    return {"fail": "failed", "completed": "complete", "prune": "pruned"}.get(text, text)


#: Plain config fields added after the first release, with their defaults. They enter the hash
#: only when they differ from the default, so that a stored profile's hash stays valid when a
#: later version adds a field (the profile then means the same as before: the field's default).
#: Append every new plain `SampleAttentionConfig` field here; the selection rule's parameters
#: enter through the rule (`sampleattn.rules.SelectionRule.hash_fields`).
LATER_CONFIG_FIELDS = {"dense_above": 1.0}


def content_hash(config: ModelAttentionProfile) -> str:
    """SHA-256 of the canonical JSON of a profile's configuration (sorted keys, no spaces).

    Two profiles have the same hash exactly when they configure the operator the same way,
    whatever model, length or store they belong to. The selection rule is written flat, as
    its ``hash_fields`` say (the paper's rule adds nothing: hashes of the first release hold).
    """
    data = json.loads(config.model_dump_json())
    data["config"].pop("selection", None)
    data["config"].update(config.config.selection.hash_fields())
    for name, default in LATER_CONFIG_FIELDS.items():
        if data["config"].get(name) == default:
            del data["config"][name]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ModelInfo(_Frozen):
    """A model the store holds profiles for: identity and attention geometry.

    Attributes:
        name: short catalogue name (``"smollm2-135m"``); the model's natural key.
        hf_id: Hugging Face id or local path it was loaded from.
        family: architecture family (``"llama"``, ``"chatglm"``, ``"internlm2"``, ``"qwen2"``).
        num_layers, num_q_heads, num_kv_heads, head_dim: attention geometry; profiles' layer
            and head indices are checked against it.
        trained_context: the context length the model was trained for, in tokens.
    """

    name: str = _NAME
    hf_id: str | None = Field(None, max_length=512)
    family: str | None = Field(None, max_length=64)
    num_layers: int = Field(ge=1)
    num_q_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    trained_context: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _gqa(self) -> "ModelInfo":
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(
                f"num_q_heads={self.num_q_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        return self


class CalibrationInfo(_Frozen):
    """Where a run's calibration data came from.

    Attributes:
        kind: ``"real"`` (text: the essays, a user file) or ``"synthetic"`` (generated tensors,
            for dry runs and tests). `ProfileStore.get_profile` skips synthetic profiles unless
            asked.
        source: what was used, e.g. ``"essays"``, ``"synthetic"``, ``"file:/data/calib.jsonl"``.
        fingerprint: a hash of the data (text and tokenizer), so that runs on the same data can
            be recognised.
        samples: number of calibration samples.
    """

    kind: CalibrationKind
    source: str = Field(min_length=1, max_length=1024)
    fingerprint: str | None = Field(None, max_length=128)
    samples: int | None = Field(None, ge=0)


class ParamSpace(_Frozen):
    """One dimension of a search space (mirrors Optuna's distributions)."""

    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[JsonScalar] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ParamSpace":
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list of choices")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.kind} parameter needs low <= high (got {self.low}, {self.high})")
        return self


def search_space_from_distributions(distributions: Mapping[str, Any]) -> dict[str, ParamSpace]:
    """Convert Optuna distributions (``study.trials[i].distributions``) to `ParamSpace` entries."""
    space: dict[str, ParamSpace] = {}
    for name, dist in distributions.items():
        kind = type(dist).__name__
        if hasattr(dist, "choices"):
            space[name] = ParamSpace(kind="categorical", choices=list(dist.choices))
        elif kind.startswith("Int"):
            space[name] = ParamSpace(kind="int", low=dist.low, high=dist.high, log=dist.log, step=dist.step)
        else:
            space[name] = ParamSpace(
                kind="float", low=dist.low, high=dist.high, log=dist.log, step=getattr(dist, "step", None)
            )
    return space


class TrialMetrics(_Frozen):
    """What a trial measured (all optional: a failed trial has none).

    Attributes:
        rel_error: relative L2 error of the attention output against exact attention.
        retained_mass_mean, retained_mass_min: attention mass kept by the selection (mean and
            worst over the evaluated rows, layers and heads).
        density: fraction of the causal score matrix computed.
        latency_ms, dense_latency_ms: time of the sparse and of the dense attention.
        speedup: ``dense_latency_ms / latency_ms``; filled in from the two when not given.
        latency_measured: True when the latencies were measured (CUDA events), False when
            estimated (the CPU's analytic estimate).
        extra: other metrics by name (``kl_divergence``, ``top1_agreement``...).
    """

    rel_error: float | None = Field(None, ge=0.0)
    retained_mass_mean: float | None = Field(None, ge=0.0)
    retained_mass_min: float | None = Field(None, ge=0.0)
    density: float | None = Field(None, ge=0.0, le=1.0)
    latency_ms: float | None = Field(None, ge=0.0)
    dense_latency_ms: float | None = Field(None, ge=0.0)
    speedup: float | None = Field(None, ge=0.0)
    latency_measured: bool | None = None
    extra: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_nan(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key, value in data.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(
                        f"metric {key}={value} is not finite; record a failed or diverged trial "
                        "with the metric left out (None) and say why in error_message"
                    )
        return data

    @model_validator(mode="after")
    def _speedup(self) -> "TrialMetrics":
        if self.speedup is None and self.latency_ms and self.dense_latency_ms is not None:
            object.__setattr__(self, "speedup", self.dense_latency_ms / self.latency_ms)
        return self


class RunInfo(_Frozen):
    """A tuning run: one invocation of the tuner for one model and some lengths.

    ``name`` is the run's natural key; the tuner derives it from the model, the lengths and the
    options, so that the same command finds the run again and resumes it (`find_run`).
    """

    name: str = Field(min_length=1, max_length=255)
    model: str = _NAME
    lengths: list[int] = Field(min_length=1)
    objective: str = Field(min_length=1, max_length=32)
    max_error: float | None = Field(None, ge=0.0)
    min_retained_mass: float | None = Field(None, ge=0.0, le=1.0)
    calibration: CalibrationInfo
    search_space: dict[str, ParamSpace] = Field(default_factory=dict)
    sampler: str | None = Field(None, max_length=64)
    seed: int | None = None
    device: str | None = Field(None, max_length=255)
    host: str | None = Field(None, max_length=255)
    env: EnvInfo = Field(default_factory=dict)
    attrs: dict[str, JsonValue] = Field(default_factory=dict)
    status: RunStatus = "running"
    started_at: datetime
    finished_at: datetime | None = None

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, lengths: list[int]) -> list[int]:
        if any(n <= 0 for n in lengths):
            raise ValueError(f"lengths {lengths} must all be positive")
        return sorted(set(lengths))

    @field_validator("started_at", "finished_at")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


class TrialRecord(_Frozen):
    """One evaluated configuration of a run.

    ``(run, study, number)`` is the trial's natural key: ``study`` is the Optuna study the
    trial belongs to (a run may hold one study per length or stage; it defaults to the run's
    name) and ``number`` is Optuna's trial number within it.
    """

    run: str = Field(min_length=1, max_length=255)
    study: str = Field(min_length=1, max_length=255)
    number: int = Field(ge=0)
    seq_len: int = Field(ge=1)
    state: TrialState
    params: dict[str, JsonScalar] = Field(default_factory=dict)
    config: ModelAttentionProfile | None = None
    metrics: TrialMetrics = Field(default_factory=TrialMetrics)
    worker: str | None = Field(None, max_length=255)
    device: str | None = Field(None, max_length=255)
    duration_s: float | None = Field(None, ge=0.0)
    error_message: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("state", mode="before")
    @classmethod
    def _state(cls, value: Any) -> str:
        return normalize_state(value)

    @field_validator("created_at", "updated_at")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


class ProfileRecord(_Frozen):
    """The configuration chosen for a model at a tuned length.

    Natural key: ``(model, seq_len, calibration_kind)``. ``content_hash`` is
    `content_hash(config)`; it is checked on import.
    """

    model: str = _NAME
    seq_len: int = Field(ge=1)
    calibration_kind: CalibrationKind
    config: ModelAttentionProfile
    metrics: TrialMetrics = Field(default_factory=TrialMetrics)
    run: str | None = Field(None, max_length=255)
    device: str | None = Field(None, max_length=255)
    env: EnvInfo = Field(default_factory=dict)
    content_hash: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @model_validator(mode="after")
    def _hash(self) -> "ProfileRecord":
        expected = content_hash(self.config)
        if not self.content_hash:
            object.__setattr__(self, "content_hash", expected)
        elif self.content_hash != expected:
            raise ValueError(
                f"content_hash {self.content_hash[:12]}... does not match the config "
                f"(expected {expected[:12]}...): the profile was edited after it was saved"
            )
        return self

    @field_validator("created_at", "updated_at")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


class StoreExport(_Frozen):
    """A whole store (or some models of it) as one versioned JSON document.

    ``format`` and ``format_version`` identify the document; an import refuses an unknown
    format and a version newer than `EXPORT_FORMAT_VERSION`.
    """

    format: Literal["sampleattn-profile-store"] = EXPORT_FORMAT
    format_version: int = EXPORT_FORMAT_VERSION
    exported_at: datetime
    sampleattn_version: str
    schema_revision: str
    models: list[ModelInfo] = Field(default_factory=list)
    runs: list[RunInfo] = Field(default_factory=list)
    trials: list[TrialRecord] = Field(default_factory=list)
    profiles: list[ProfileRecord] = Field(default_factory=list)


class ImportSummary(_Frozen):
    """Counts of the rows an import inserted or updated, by kind."""

    models: int = 0
    runs: int = 0
    trials: int = 0
    profiles: int = 0


def validate_env(env: Mapping[str, Any] | None) -> EnvInfo:
    """Validate environment metadata (flat mapping of JSON scalars)."""
    return _ENV.validate_python(dict(env or {}))
