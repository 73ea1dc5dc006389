"""Conformance of the `ProfileStore` API: the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import warnings

import pytest
from store_helpers import ENV, add_model, add_run, populate, trial_metrics

from sampleattn.config import ModelAttentionProfile, SampleAttentionConfig
from sampleattn.store import (
    ImportFormatError,
    ModelNotFoundError,
    ProfileDistanceWarning,
    ProfileNotFoundError,
    ProfileStore,
    ReadOnlyStoreError,
    RunNotFoundError,
    StoreError,
    StoreNotFoundError,
    content_hash,
)
from sampleattn.store.pareto import dominates


def test_import_sampleattn_stays_light():
    code = (
        "import sys, sampleattn, sampleattn.store\n"
        "from sampleattn.store import choose_bucket, StoreError, ProfileNotFoundError\n"
        "heavy = [m for m in ('sqlalchemy', 'alembic', 'optuna') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from sampleattn.store import ProfileStore\n"
        "assert 'sqlalchemy' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_url(monkeypatch, tmp_path):
    from sampleattn.store import default_url

    monkeypatch.delenv("SAMPLEATTN_STORE", raising=False)
    monkeypatch.delenv("SAMPLEATTN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_url() == f"sqlite:///{tmp_path}/sampleattn/profiles.sqlite"
    monkeypatch.setenv("SAMPLEATTN_CACHE", str(tmp_path / "mine"))  # sampleattn's cache root
    assert default_url() == f"sqlite:///{tmp_path}/mine/profiles.sqlite"
    monkeypatch.delenv("SAMPLEATTN_CACHE")
    monkeypatch.setenv("SAMPLEATTN_STORE", str(tmp_path / "elsewhere.db"))
    assert default_url() == f"sqlite:///{tmp_path}/elsewhere.db"
    monkeypatch.setenv("SAMPLEATTN_STORE", "postgresql://user@db.example/profiles")
    assert default_url() == "postgresql://user@db.example/profiles"


def test_default_store_is_created_under_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SAMPLEATTN_STORE", raising=False)
    monkeypatch.delenv("SAMPLEATTN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with ProfileStore() as store:
        add_model(store)
    assert (tmp_path / "cache" / "sampleattn" / "profiles.sqlite").is_file()
    with ProfileStore(readonly=True) as reader:
        assert [m.name for m in reader.list_models()] == ["llama-toy"]


def test_models(store):
    info = add_model(store)
    assert store.get_model("llama-toy") == info
    add_model(store, trained_context=131072)  # an upsert, not a second row
    assert [m.trained_context for m in store.list_models()] == [131072]
    with pytest.raises(ModelNotFoundError, match="no model 'nope'.*known: llama-toy"):
        store.get_model("nope")
    with pytest.raises(ValueError, match="not a multiple"):
        add_model(store, name="bad", num_q_heads=7, num_kv_heads=2)


def test_runs_find_resume_finish(store):
    add_model(store)
    run = add_run(store)
    assert run.status == "running" and run.host == "node-1" and run.device == "NVIDIA H200"
    assert run.lengths == [8192, 32768]
    found = store.find_run(run.name)
    assert found == run
    assert store.find_run("no such run") is None
    with pytest.raises(StoreError, match="exists already"):
        add_run(store)
    finished = store.finish_run(run, "interrupted")
    assert finished.status == "interrupted" and finished.finished_at is not None
    resumed = add_run(store, resume=True)
    assert resumed.status == "running" and resumed.finished_at is None
    assert resumed.started_at == run.started_at
    assert [r.name for r in store.list_runs("llama-toy")] == [run.name]
    with pytest.raises(RunNotFoundError):
        store.get_run("nope")
    with pytest.raises(ModelNotFoundError):
        add_run(store, model="unknown-model")
    with pytest.raises(ValueError):
        store.finish_run(run, "done")


def test_run_metadata_round_trips(store):
    add_model(store)
    run = add_run(store, sampler="NSGAIISampler", seed=2**40)
    stored = store.get_run(run.name)
    assert stored.env == ENV
    assert stored.seed == 2**40
    assert stored.search_space["window_ratio"].log is True
    assert stored.search_space["gqa_granularity"].choices == ["query_head", "kv_head"]
    assert stored.calibration.fingerprint == "sha256:abc"
    assert stored.attrs == {"rope_scaling": None, "per_layer": False}


def test_start_run_records_the_environment_by_default(store):
    from sampleattn.env import collect_env

    add_model(store)
    run = add_run(store, env=None, host=None)
    assert run.env == collect_env()
    assert run.device == collect_env()["device"]
    assert run.host


def test_record_trial_is_an_upsert(store):
    add_model(store)
    run = add_run(store)
    first = store.record_trial(run, 0, seq_len="8k", state="running", params={"alpha": 0.9})
    second = store.record_trial(run, 0, seq_len=8192, state="COMPLETE", params={"alpha": 0.9},
                                config=SampleAttentionConfig(alpha=0.9), metrics=trial_metrics(0.02, 1.0))
    trials = store.trials(run)
    assert len(trials) == 1
    assert trials[0].state == "complete"
    assert trials[0].metrics.speedup == pytest.approx(4.0)  # dense 4.0 ms / 1.0 ms
    assert trials[0].config == ModelAttentionProfile(config=SampleAttentionConfig(alpha=0.9))
    assert trials[0].created_at == first.created_at
    assert trials[0].updated_at >= second.created_at
    # Another study of the same run may reuse Optuna's trial numbers.
    store.record_trial(run, 0, seq_len="32k", state="complete", study="llama-toy/32k/layers")
    assert len(store.trials(run)) == 2
    assert [t.number for t in store.trials(run, study="llama-toy/32k/layers")] == [0]


def test_record_trial_validates(store):
    add_model(store)
    run = add_run(store)
    with pytest.raises(ValueError, match="not one of run"):
        store.record_trial(run, 0, seq_len="16k", state="complete")
    with pytest.raises(ValueError, match="not finite"):
        store.record_trial(run, 0, seq_len="8k", state="complete", metrics={"rel_error": float("nan")})
    with pytest.raises(ValueError):
        store.record_trial(run, 0, seq_len="8k", state="exploded")
    with pytest.raises(ValueError):
        store.record_trial(run, 0, seq_len="8k", state="complete", config={"config": {"alpha": 1.5}})
    with pytest.raises(ValueError):
        store.record_trial(run, 0, seq_len="8k", state="complete", metrics={"rel_err": 0.1})
    with pytest.raises(RunNotFoundError):
        store.record_trial("no-run", 0, seq_len="8k", state="complete")
    assert store.trials(run) == []


def test_optuna_trial_states_are_accepted(store):
    from optuna.trial import TrialState

    add_model(store)
    run = add_run(store)
    for number, state in enumerate([TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING]):
        store.record_trial(run, number, seq_len="8k", state=state)
    assert [t.state for t in store.trials(run)] == ["complete", "failed", "pruned", "running"]


def test_mark_running_trials_failed(store):
    add_model(store)
    run = add_run(store)
    other = add_run(store, name="other")
    for number in range(4):
        store.record_trial(run, number, seq_len="8k", state="running" if number % 2 else "complete")
    store.record_trial(other, 0, seq_len="8k", state="running")
    assert store.mark_running_trials_failed(run) == 2
    assert store.mark_running_trials_failed(run) == 0
    states = {t.number: (t.state, t.error_message) for t in store.trials(run)}
    assert states[1][0] == states[3][0] == "failed" and "stopped" in states[1][1]
    assert states[0] == ("complete", None)
    assert store.trials(other)[0].state == "running"


def test_save_profile_upserts_and_hashes(store):
    add_model(store)
    run = add_run(store)
    config = {"config": {"alpha": 0.95}, "layers": {1: {"alpha": 0.99, "heads": {7: {"window_ratio": 0.1}}}}}
    saved = store.save_profile("llama-toy", "32k", config, run=run, metrics=trial_metrics(0.02, 1.0))
    assert saved.calibration_kind == "real" and saved.run == run.name and saved.device == "NVIDIA H200"
    assert saved.content_hash == content_hash(ModelAttentionProfile.model_validate(config))
    got = store.get_profile("llama-toy", "32k")
    assert got == saved
    assert got.config.layer_config(1).alpha == 0.99
    assert got.config.head_overrides(1)[7].window_ratio == 0.1
    replaced = store.save_profile("llama-toy", 32768, SampleAttentionConfig(alpha=0.97), run=run)
    profiles = store.list_profiles("llama-toy")
    assert len(profiles) == 1
    assert profiles[0].config.config.alpha == 0.97
    assert profiles[0].content_hash == replaced.content_hash != saved.content_hash
    assert profiles[0].created_at == saved.created_at


def test_save_profile_checks(store):
    add_model(store)
    run = add_run(store)
    synthetic = add_run(store, name="syn", kind="synthetic")
    with pytest.raises(ValueError, match="layer 4, but model llama-toy has 4 layers"):
        store.save_profile("llama-toy", "8k", {"layers": {4: {"alpha": 0.9}}}, run=run)
    with pytest.raises(ValueError, match="head 8 of layer 0"):
        store.save_profile("llama-toy", "8k", {"layers": {0: {"heads": {8: {"alpha": 0.9}}}}}, run=run)
    with pytest.raises(ValueError, match="calibrated on 'synthetic'"):
        store.save_profile("llama-toy", "8k", {}, run=synthetic, calibration_kind="real")
    with pytest.raises(ValueError, match="calibration_kind"):
        store.save_profile("llama-toy", "8k", {}, env=ENV)
    with pytest.raises(ModelNotFoundError):
        store.save_profile("nope", "8k", {}, calibration_kind="real", env=ENV)
    add_model(store, name="other")
    with pytest.raises(ValueError, match="not a run of model"):
        store.save_profile("other", "8k", {}, run=run)
    assert store.list_profiles() == []


def test_profiles_by_calibration_kind(store):
    populate(store)
    kinds = [(p.seq_len, p.calibration_kind) for p in store.list_profiles()]
    assert kinds == [(8192, "real"), (8192, "synthetic"), (32768, "real")]
    assert len(store.list_profiles(calibration_kind="synthetic")) == 1


def test_bucket_rule(store):
    add_model(store)
    run = add_run(store)
    for length, alpha in (("8k", 0.9), ("32k", 0.95)):
        store.save_profile("llama-toy", length, {"config": {"alpha": alpha}}, run=run)
    cases = {  # requested -> (tuned length chosen, far?)
        "32k": (32768, False), "40000": (32768, False), "64k": (32768, False), "96k": (32768, True),
        "16k": (8192, False), "31k": (8192, True), "8k": (8192, False), "4k": (8192, False), "2k": (8192, True),
    }
    for requested, (length, far) in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert store.get_profile("llama-toy", requested).seq_len == length, requested
        distance = [w for w in caught if issubclass(w.category, ProfileDistanceWarning)]
        assert bool(distance) == far, requested
    profile, choice = store.resolve_profile("llama-toy", "96k")
    assert (choice.length, choice.exact, choice.ratio) == (32768, False, 3.0)
    with pytest.warns(ProfileDistanceWarning, match="tuned at 32k for a length of 1m"):
        store.get_profile("llama-toy", "1m")


def test_synthetic_profiles_only_when_asked(store):
    add_model(store)
    synthetic = add_run(store, kind="synthetic")
    store.save_profile("llama-toy", "32k", {"config": {"alpha": 0.9}}, run=synthetic)
    with pytest.raises(ProfileNotFoundError, match="only profiles tuned on synthetic.*allow_synthetic=True"):
        store.get_profile("llama-toy", "32k")
    assert store.get_profile("llama-toy", "32k", allow_synthetic=True).calibration_kind == "synthetic"
    # As soon as a real profile exists, it is preferred, even at a farther length.
    real = add_run(store)
    store.save_profile("llama-toy", "8k", {"config": {"alpha": 0.97}}, run=real)
    for allow in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ProfileDistanceWarning)
            got = store.get_profile("llama-toy", "32k", allow_synthetic=allow)
        assert (got.calibration_kind, got.seq_len) == ("real", 8192)


def test_get_profile_not_found(store):
    with pytest.raises(ProfileNotFoundError, match="does not know it"):
        store.get_profile("llama-toy", "8k")
    add_model(store)
    with pytest.raises(ProfileNotFoundError, match="has no profile.*sattn-tune --model llama-toy --lengths 8k"):
        store.get_profile("llama-toy", "8k")
    assert isinstance(ProfileNotFoundError("x"), LookupError)


def test_delete(store):
    runs = populate(store)
    assert store.delete_profile("llama-toy", "8k", calibration_kind="synthetic") == 1
    assert store.delete_profile("llama-toy", "8k", calibration_kind="synthetic") == 0
    store.delete_run(runs["real"])
    assert store.find_run(runs["real"].name) is None
    assert {t.run for t in store.trials()} == {runs["synthetic"].name}
    # Profiles survive their run; they no longer point to it.
    assert {p.run for p in store.list_profiles()} == {None}
    assert store.delete_profile("llama-toy") == 2
    store.delete_model("llama-toy")
    assert store.list_models() == [] and store.list_runs() == [] and store.trials() == []


def _brute_force_front(trials):
    points = {(t.run, t.study, t.number): (t.metrics.rel_error, t.metrics.latency_ms) for t in trials}
    return {
        key for key, point in points.items()
        if not any(dominates(other, point) for other_key, other in points.items() if other_key != key)
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_pareto_against_brute_force(store, seed):
    rng = random.Random(seed)
    add_model(store)
    add_model(store, name="other-model")
    runs = [add_run(store, name=f"run-{i}", kind="real" if i < 2 else "synthetic") for i in range(3)]
    other_run = add_run(store, model="other-model", name="other-run")
    for number in range(50):
        run = rng.choice(runs)
        # Coarse values, so that ties on one or both objectives happen.
        error = round(rng.uniform(0, 0.1), 2)
        latency = round(rng.uniform(1, 3), 1)
        state = rng.choices(["complete", "failed", "pruned", "running"], weights=[8, 1, 1, 1])[0]
        metrics = trial_metrics(error, latency) if state == "complete" or rng.random() < 0.3 else {}
        if state == "complete" and rng.random() < 0.1:
            metrics = {"rel_error": error}  # no latency: cannot be placed
        store.record_trial(run, number, seq_len=rng.choice(["8k", "32k"]), state=state, metrics=metrics)
        store.record_trial(other_run, number, seq_len="8k", state="complete", metrics=trial_metrics(0.0, 0.1))
    for length in ("8k", "32k"):
        eligible = [
            t for t in store.trials(model="llama-toy", seq_len=length, states=["complete"])
            if t.metrics.rel_error is not None and t.metrics.latency_ms is not None
        ]
        front = store.pareto("llama-toy", length)
        assert {(t.run, t.study, t.number) for t in front} == _brute_force_front(eligible)
        assert [t.metrics.latency_ms for t in front] == sorted(t.metrics.latency_ms for t in front)
        assert front, "the test data should give a non-empty front"
        by_run = store.pareto("llama-toy", length, run="run-0")
        assert {(t.run, t.study, t.number) for t in by_run} == _brute_force_front(
            [t for t in eligible if t.run == "run-0"])
        real = store.pareto("llama-toy", length, calibration_kind="real")
        assert {(t.run, t.study, t.number) for t in real} == _brute_force_front(
            [t for t in eligible if t.run != "run-2"])
    assert store.pareto("llama-toy", "1m") == []
    with pytest.raises(ModelNotFoundError):
        store.pareto("no-model", "8k")


def _comparable(export) -> dict:
    data = json.loads(export.model_dump_json())
    data.pop("exported_at")
    return data


def test_export_import_round_trip(store, tmp_path):
    populate(store)
    exported = store.export()
    assert exported.format == "sampleattn-profile-store" and exported.format_version == 1
    assert (len(exported.models), len(exported.runs), len(exported.trials), len(exported.profiles)) == (1, 2, 11, 3)
    path = tmp_path / "export.json"
    path.write_text(exported.model_dump_json(indent=2))
    with ProfileStore(tmp_path / "copy.sqlite") as copy:
        summary = copy.import_(path)
        assert (summary.models, summary.runs, summary.trials, summary.profiles) == (1, 2, 11, 3)
        assert _comparable(copy.export()) == _comparable(exported)
        copy.import_(path.read_text())  # again: upserts, nothing doubled
        assert _comparable(copy.export()) == _comparable(exported)
        assert copy.get_profile("llama-toy", "32k") == store.get_profile("llama-toy", "32k")
    # And back into the original store: unchanged.
    store.import_(json.loads(path.read_text()))
    assert _comparable(store.export()) == _comparable(exported)


def test_export_selected_models_without_trials(store):
    populate(store)
    add_model(store, name="second")
    exported = store.export(["second"], include_trials=False)
    assert [m.name for m in exported.models] == ["second"] and exported.runs == exported.profiles == []
    assert store.export(include_trials=False).trials == []
    with pytest.raises(ModelNotFoundError):
        store.export(["nope"])


def test_import_refuses_bad_exports(store, tmp_path):
    populate(store)
    good = json.loads(store.export().model_dump_json())
    with ProfileStore(tmp_path / "target.sqlite") as target:
        with pytest.raises(ImportFormatError, match="format version 99.*Upgrade sampleattn"):
            target.import_({**good, "format_version": 99})
        with pytest.raises(ImportFormatError, match="not a sampleattn store export"):
            target.import_({"format": "something-else"})
        with pytest.raises(ImportFormatError, match="not valid JSON"):
            target.import_("{not json")
        tampered = json.loads(json.dumps(good))
        tampered["profiles"][0]["config"]["config"]["alpha"] = 0.5
        with pytest.raises(ImportFormatError, match="content_hash"):
            target.import_(tampered)
        # An export whose profile names a model that is neither in it nor in the store: nothing
        # of it is written (one transaction).
        orphan = {**good, "models": [], "runs": [], "trials": []}
        with pytest.raises(ModelNotFoundError):
            target.import_(orphan)
        assert target.list_models() == [] and target.list_profiles() == []


def test_reader_never_writes(store, store_url):
    populate(store)
    with ProfileStore(store_url, readonly=True) as reader:
        assert len(reader.list_profiles()) == 3
        assert reader.get_profile("llama-toy", "8k").calibration_kind == "real"
        for write in (
            lambda: add_model(reader, name="x"),
            lambda: reader.record_trial("llama-toy/8k,32k/real", 99, seq_len="8k", state="complete"),
            lambda: reader.save_profile("llama-toy", "8k", {}, calibration_kind="real", env=ENV),
            lambda: reader.delete_model("llama-toy"),
            lambda: reader.import_(store.export()),
        ):
            with pytest.raises(ReadOnlyStoreError, match="read-only"):
                write()


def test_reader_connections_cannot_write(store, store_url):
    """Readers are read-only at the database level too (query_only / read-only sessions)."""
    from sqlalchemy import text

    add_model(store)
    with ProfileStore(store_url, readonly=True) as reader:
        with pytest.raises(Exception, match="(?i)read.only|readonly"):
            with reader._engine.begin() as connection:
                connection.execute(text("DELETE FROM sattn_models"))
    assert [m.name for m in store.list_models()] == ["llama-toy"]


def test_reader_on_an_empty_database(store_url, backend, tmp_path):
    with pytest.raises(StoreNotFoundError, match="sattn-tune"):
        ProfileStore(store_url, readonly=True)
    with pytest.raises(StoreNotFoundError):
        ProfileStore(store_url, create=False)
    if backend == "sqlite":
        assert not (tmp_path / "store.sqlite").exists()  # the reader did not create it
        (tmp_path / "store.sqlite").touch()
        with pytest.raises(StoreNotFoundError):
            ProfileStore(store_url, readonly=True)
        assert (tmp_path / "store.sqlite").stat().st_size == 0


def test_store_shares_a_database_with_optuna(store_url):
    """The tuner may keep its Optuna study at the store's URL: both schemas live side by side."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="llama-toy/8k", storage=store_url)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    with ProfileStore(store_url) as store:
        populate(store)
    study = optuna.load_study(study_name="llama-toy/8k", storage=store_url)
    assert len(study.trials) == 2
    with ProfileStore(store_url, readonly=True) as reader:
        assert len(reader.trials()) == 11


def test_bad_urls():
    with pytest.raises(StoreError, match="cannot"):
        ProfileStore("nosuchdialect://x/y")
    with pytest.raises(StoreError, match="cannot connect"):
        ProfileStore("postgresql+psycopg2://nobody@127.0.0.1:9/none?connect_timeout=2", readonly=True)
