"""Resuming a killed tuning run (`tuner.trials.recover`) on a real Optuna study and a real SQLite
store: trials left RUNNING are failed in both, and those that had reached a worker (their store
record holds a profile) are re-queued whole."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from sampleattn.config import ModelAttentionProfile
from sampleattn.store import ProfileStore
from sampleattn.tuner.objectives import LayerObjective
from sampleattn.tuner.search_space import Budget, config_from_params
from sampleattn.tuner.trials import INTERRUPTED, StudyContext, counts, enqueue, recover

ENV = {"python": "3.11", "device": "cpu", "device_count": 0, "torch": "2.9.0", "sampleattn": "0.1.0"}


def test_a_trial_killed_while_sampling_is_not_requeued_with_part_of_its_parameters(tmp_path):
    """A trial is handed to a worker once `ask` has sampled all its parameters (the driver then
    records it ``running`` with its profile). One killed before that holds some parameters at
    most; re-queueing those would run a different trial (the rest sampled anew)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with ProfileStore(tmp_path / "store.sqlite") as store:
        store.register_model(name="toy", hf_id="org/toy", family="llama", num_layers=2, num_q_heads=4,
                             num_kv_heads=2, head_dim=64, trained_context=8192)
        run = store.start_run("toy", name="toy/2k", lengths=["2k"], objective="layer",
                              calibration={"kind": "synthetic", "source": "synthetic", "fingerprint": "sha256:0",
                                           "samples": 1}, env=ENV, host="test")
        ctx = StudyContext(store=store, run=run, pool=None, storage_url=store.url, objective=LayerObjective(),
                           budget=Budget(0.07, 0.8))
        study = optuna.create_study(directions=["minimize", "minimize"])

        worked = study.ask()  # sampled everything and went to a worker
        params = {"alpha": worked.suggest_float("alpha", 0.8, 0.99),
                  "window_ratio": worked.suggest_float("window_ratio", 0.01, 0.1)}
        store.record_trial(run, worked.number, seq_len=2048, state="running", params=params, study="search",
                           config=ModelAttentionProfile(config=config_from_params(params)), worker="cpu-actor-0")
        cut = study.ask()  # killed inside `ask`, after its first parameter
        cut.suggest_float("alpha", 0.8, 0.99)
        enqueue(study, {"alpha": 0.95, "window_ratio": 0.08}, baseline="dense")
        study.ask()  # an enqueued trial killed before sampling: its whole set is in its user attributes

        assert recover(ctx, study, "search", 2048) == (3, 2)
        trials = study.get_trials(deepcopy=False)
        assert [t.state for t in trials[:3]] == [TrialState.FAIL] * 3
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        assert [t.user_attrs["enqueued_params"] for t in waiting] == [params, {"alpha": 0.95, "window_ratio": 0.08}]
        assert [t.user_attrs.get("baseline") for t in waiting] == [None, "dense"]
        recorded = {t.number: t for t in store.trials(run, study="search")}
        assert sorted(recorded) == [0, 1, 2] and all(r.state == "failed" for r in recorded.values())
        assert "re-queued" in recorded[0].error_message and "re-queued" not in recorded[1].error_message
        assert recorded[0].config is not None and recorded[0].worker == "cpu-actor-0"
        assert recorded[1].config is None
        assert counts(recorded.values()) == {"complete": 0, "failed": 0, "interrupted": 3}
        assert all(r.error_message.startswith(INTERRUPTED) for r in recorded.values())
        assert recover(ctx, study, "search", 2048) == (0, 0)  # nothing left running
