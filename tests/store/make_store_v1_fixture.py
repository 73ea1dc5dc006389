"""Make ``fixtures/store_v1.sqlite``: a profile store at schema revision 0001, with data.

    .venv/bin/python tests/store/make_store_v1_fixture.py [OUTPUT]

The file is committed; ``test_store_migrations.py`` upgrades a copy of it to the head revision
and checks that nothing is lost. The rows are written with SQL against the tables as revision
0001 made them (reflected, not the ORM of today), with fixed timestamps, so that the script
gives the same content whenever it runs. `populate_v1` is also used by the tests to build a
revision-0001 store on PostgreSQL.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import MetaData, create_engine

from sampleattn.store.migrate import upgrade

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "fixtures" / "store_v1.sqlite"

T0 = datetime(2025, 11, 1, 12, 0, 0)  # naive UTC, as SQLite stores it
T1 = datetime(2025, 11, 1, 13, 30, 0)

ENV = {"python": "3.11.7", "device": "cpu", "device_count": 0, "cuda": None, "torch": "2.5.1", "triton": "3.1.0",
       "sampleattn": "0.1.0"}

#: What the fixture holds, for the tests to check after the upgrade.
EXPECTED = {
    "model": "smollm2-135m",
    "runs": {"smollm2-135m/1k,2k/essays": 12, "smollm2-135m/1k/synthetic": 3},
    "profiles": {(1024, "real"), (2048, "real"), (1024, "synthetic")},
}


def _when(value: datetime, timezone_aware: bool) -> datetime:
    return value.replace(tzinfo=timezone.utc) if timezone_aware else value


def populate_v1(connection) -> None:
    """Insert the fixture's rows into a database at revision 0001 (any backend)."""
    aware = connection.dialect.name != "sqlite"
    t0, t1 = _when(T0, aware), _when(T1, aware)
    meta = MetaData()
    meta.reflect(connection, only=["sattn_models", "sattn_runs", "sattn_trials", "sattn_profiles"])
    models, runs, trials, profiles = (meta.tables[n] for n in ("sattn_models", "sattn_runs", "sattn_trials", "sattn_profiles"))
    assert "host" not in runs.c, "populate_v1 needs a database at revision 0001"
    connection.execute(models.insert().values(
        id=1, name="smollm2-135m", hf_id="HuggingFaceTB/SmolLM2-135M", family="llama", num_layers=30,
        num_q_heads=9, num_kv_heads=3, head_dim=64, trained_context=8192, created_at=t0, updated_at=t0,
    ))
    space = {
        "alpha": {"kind": "float", "low": 0.8, "high": 0.995, "log": False, "step": None, "choices": None},
        "window_ratio": {"kind": "float", "low": 0.005, "high": 0.15, "log": True, "step": None, "choices": None},
    }
    common = dict(model_id=1, objective="layer", max_error=0.05, min_retained_mass=0.9, search_space=space,
                  sampler="TPESampler", seed=7, device="cpu", env=ENV, started_at=t0)
    connection.execute(runs.insert().values(
        id=1, name="smollm2-135m/1k,2k/essays", lengths=[1024, 2048], calibration_kind="real",
        calibration_source="essays", calibration_fingerprint="sha256:3f2a", calibration_samples=4,
        attrs={"rope_scaling": None}, status="complete", finished_at=t1, **common,
    ))
    connection.execute(runs.insert().values(
        id=2, name="smollm2-135m/1k/synthetic", lengths=[1024], calibration_kind="synthetic",
        calibration_source="synthetic", calibration_fingerprint=None, calibration_samples=2,
        attrs={}, status="interrupted", finished_at=t1, **common,
    ))
    rows = []
    for number in range(12):
        seq_len = 1024 if number < 6 else 2048
        alpha = 0.8 + 0.015 * number
        state = "failed" if number == 5 else "pruned" if number == 9 else "complete"
        done = state == "complete"
        rows.append(dict(
            run_id=1, study="smollm2-135m/1k,2k/essays", number=number, seq_len=seq_len, state=state,
            params={"alpha": alpha, "window_ratio": 0.02},
            config={"config": {"alpha": alpha, "window_ratio": 0.02}, "layers": {}},
            rel_error=(0.1 - 0.007 * number) if done else None,
            retained_mass_mean=0.95 if done else None, retained_mass_min=0.9 if done else None,
            density=0.2 + 0.03 * number if done else None,
            latency_ms=1.0 + 0.1 * number if done else None, dense_latency_ms=3.0 if done else None,
            speedup=3.0 / (1.0 + 0.1 * number) if done else None, latency_measured=False if done else None,
            extra_metrics={}, worker=f"worker-{number % 2}", device="cpu", duration_s=2.5,
            error_message="CUDA out of memory" if state == "failed" else None, created_at=t0, updated_at=t0,
        ))
    for number in range(3):
        rows.append(dict(
            run_id=2, study="smollm2-135m/1k/synthetic", number=number, seq_len=1024,
            state="running" if number == 2 else "complete", params={"alpha": 0.9}, config=None,
            rel_error=0.02 if number < 2 else None, retained_mass_mean=None, retained_mass_min=None,
            density=None, latency_ms=1.5 if number < 2 else None, dense_latency_ms=None, speedup=None,
            latency_measured=None, extra_metrics={"kl_divergence": 0.01}, worker=None, device=None,
            duration_s=None, error_message=None, created_at=t0, updated_at=t0,
        ))
    connection.execute(trials.insert(), rows)
    hashes: dict[tuple[int, str], str] = {}
    from sampleattn.config import ModelAttentionProfile
    from sampleattn.store.schemas import content_hash

    def profile(pid, seq_len, kind, run_id, config):
        validated = ModelAttentionProfile.model_validate(config)
        hashes[(seq_len, kind)] = content_hash(validated)
        return dict(
            id=pid, model_id=1, seq_len=seq_len, calibration_kind=kind, config=validated.model_dump(mode="json"),
            metrics={"rel_error": 0.03, "retained_mass_mean": 0.95, "retained_mass_min": 0.9, "density": 0.3,
                     "latency_ms": 1.2, "dense_latency_ms": 3.0, "speedup": 2.5, "latency_measured": False,
                     "extra": {}},
            run_id=run_id, device="cpu", env=ENV, content_hash=hashes[(seq_len, kind)], created_at=t0,
            updated_at=t1,
        )

    connection.execute(profiles.insert(), [
        profile(1, 1024, "real", 1, {"config": {"alpha": 0.92, "window_ratio": 0.02}}),
        profile(2, 2048, "real", 1, {"config": {"alpha": 0.95, "window_ratio": 0.02},
                                     "layers": {"0": {"alpha": 0.99, "heads": {"2": {"window_ratio": 0.05}}}}}),
        profile(3, 1024, "synthetic", 2, {"config": {"alpha": 0.9}}),
    ])


def make(output: Path = DEFAULT_OUTPUT) -> Path:
    """Write the fixture file (replacing it)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(output) + suffix).unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{output}")
    upgrade(engine, "0001")
    with engine.begin() as connection:
        populate_v1(connection)
    with engine.connect() as connection:
        connection.exec_driver_sql("VACUUM")
    engine.dispose()
    return output


if __name__ == "__main__":
    path = make(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
