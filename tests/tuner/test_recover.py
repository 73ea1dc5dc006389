"""Resuming a killed tuning run (`tuner.search._recover`) on a real Optuna study and a real SQLite
store: trials left RUNNING are failed and those that had gone to a worker are re-queued whole."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
from optuna.trial import TrialState

from sampleattn.config import ModelAttentionProfile
from sampleattn.store import ProfileStore
from sampleattn.tuner.objectives import config_from_params
from sampleattn.tuner.search import _recover

ENV = {"python": "3.11", "device": "cpu", "device_count": 0, "torch": "2.9.0", "sampleattn": "0.1.0"}


def test_a_trial_killed_while_sampling_is_not_requeued_with_part_of_its_parameters(tmp_path):
    """A trial is handed to a worker once `ask` has sampled all its parameters (the driver then
    sets its "profile"). One killed before that holds some parameters at most; re-queueing
    those would run a different trial (the rest sampled anew), which is what made
    test_cli.py::test_resume_after_kill fail now and then."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with ProfileStore(tmp_path / "store.sqlite") as store:
        store.register_model(name="toy", hf_id="org/toy", family="llama", num_layers=2, num_q_heads=4,
                             num_kv_heads=2, head_dim=64, trained_context=8192)
        run = store.start_run("toy", name="toy/2k", lengths=["2k"], objective="layer",
                              calibration={"kind": "synthetic", "source": "synthetic", "fingerprint": "sha256:0",
                                           "samples": 1}, env=ENV, host="test")
        study = optuna.create_study(directions=["minimize", "minimize"])

        worked = study.ask()  # sampled everything and went to a worker
        params = {"alpha": worked.suggest_float("alpha", 0.8, 0.99),
                  "window_ratio": worked.suggest_float("window_ratio", 0.01, 0.1)}
        worked.set_user_attr("profile", ModelAttentionProfile(config=config_from_params(params)).model_dump(mode="json"))
        cut = study.ask()  # killed inside `ask`, after its first parameter
        cut.suggest_float("alpha", 0.8, 0.99)
        study.enqueue_trial({"alpha": 0.95, "window_ratio": 0.08})
        study.ask()  # an enqueued trial killed before sampling: its whole set waits in fixed_params

        assert _recover(SimpleNamespace(store=store, run=run), study, "search", 2048) == (3, 2)
        trials = study.get_trials(deepcopy=False)
        assert [t.state for t in trials[:3]] == [TrialState.FAIL] * 3
        requeued = [t.system_attrs["fixed_params"] for t in trials if t.state == TrialState.WAITING]
        assert requeued == [params, {"alpha": 0.95, "window_ratio": 0.08}]
        recorded = {t.number: t for t in store.trials(run, study="search")}
        assert "re-queued" in recorded[0].error_message and "re-queued" not in recorded[1].error_message
        assert recorded[1].config is None
