"""`zoo tune`: the search space, trials on one shared cache, pruning, failures, the study in Optuna's storage, the
best configuration's run, two workers on one storage, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import install_tiny_plugin, make_images
from zoo.cli import app
from zoo.core.errors import UsageError
from zoo.select.space import default_space, parse, read_space
from zoo.select.tune import plan_study, tune

runner = CliRunner()


@pytest.fixture
def data(tmp_path):
    return make_images(tmp_path / "data", layout="train/val/test", per_class=10, size=36)


def _plan(data, tmp_path, **kwargs):
    fixed = {"policy": "feature-extract", "weights": "none", "epochs": 3, "out": str(tmp_path / "out"),
             **kwargs.pop("fixed", {})}  # fmt: skip
    return plan_study("tiny", str(data), fixed, out=str(tmp_path / "out"), **kwargs)


def test_default_space_depends_on_the_policy_kind():
    head = {p.name: p for p in default_space(head_only=True)}
    body = {p.name: p for p in default_space(head_only=False)}
    assert set(head) == set(body) == {"lr", "weight_decay", "label_smoothing", "epochs"}
    assert head["lr"].log and head["lr"].high > body["lr"].high  # a head alone takes larger steps
    assert head["epochs"].kind is int and head["epochs"].step == 5


@pytest.mark.parametrize(
    "space, message",
    [
        ({"momentum": {"low": 0.1, "high": 0.9}}, "[momentum] is not an option zoo tune searches"),
        ({"lr": {"low": 0.1, "high": 0.1}}, "is empty"),
        ({"lr": {"low": "a", "high": 0.1}}, "is not a float"),
        ({"epochs": {"low": 1.5, "high": 4}}, "is not an int"),
        ({"lr": {"low": 0, "high": 0.1, "log": True}}, "needs low > 0"),
        ({"policy": {"low": 1, "high": 2}}, "among choices"),
        ({"policy": {"choices": []}}, "non-empty list"),
        ({"lr": {"low": 1e-3}}, "give low and high"),
        ({"lr": {"low": 1e-3, "high": 1e-2, "scale": "log"}}, "unknown key"),
        ({}, "no option to search"),
    ],
)
def test_bad_spaces_are_refused_by_name(space, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(space, "--space s.toml")


def test_a_space_value_finetune_refuses_is_refused_before_any_trial(tiny_registry, data, tmp_path):
    (tmp_path / "s.toml").write_text('[label_smoothing]\nlow = 0.0\nhigh = 1.5\n[policy]\nchoices = ["freeze:x9"]\n')
    with pytest.raises(UsageError, match=r"--space .*s.toml: --label-smoothing 1.5"):
        _plan(data, tmp_path, space=tmp_path / "s.toml")
    assert read_space(tmp_path / "s.toml")[0].high == 1.5  # the file itself parses: the values are refused


@pytest.mark.slow
def test_trials_share_one_activation_cache_and_the_best_is_trained_as_a_run(tiny_registry, data, tmp_path,
                                                                             monkeypatch):  # fmt: skip
    import optuna

    import zoo.training.cache

    computed = []
    compute = zoo.training.cache.compute_cache
    monkeypatch.setattr(zoo.training.cache, "compute_cache", lambda *a, **k: computed.append(1) or compute(*a, **k))
    plan = _plan(data, tmp_path, pruner="none")
    result = tune(plan, trials=4)
    assert [t["state"] for t in result.trials] == ["complete"] * 4, [t["reason"] for t in result.trials]
    assert len(computed) == 2  # train and val activations, once for the 4 trials
    # the study is Optuna's own: readable with its API, with zoo's records on each trial
    study = optuna.load_study(study_name=plan.study, storage=plan.storage)
    assert len(study.trials) == 4 and study.best_trial.number == result.best["number"]
    assert {"lr", "weight_decay", "label_smoothing", "epochs"} == set(study.best_trial.params)
    assert all(t.user_attrs["run_dir"] and t.user_attrs["seconds"] > 0 for t in study.trials)
    # a trial keeps its metrics only; the best configuration is an ordinary run, with the test split evaluated
    trial_dir = tmp_path / "out" / "tune-tiny-data" / "trials" / "trial-0000"
    assert sorted(p.name for p in trial_dir.iterdir()) == ["config.json", "metrics.csv", "summary.json"]
    assert json.loads((trial_dir / "summary.json").read_text())["test"] is None
    final = result.final
    assert (tmp_path / "out" / "tune-tiny-data" / "best" / "best.pt").exists() and final["test"]["images"] > 0
    folder = tmp_path / "out" / "tune-tiny-data"
    assert (folder / "tune.json").exists() and (folder / "trials.csv").read_text().count("\n") == 5
    assert (folder / "history.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_failed_trial_is_recorded_with_its_reason_and_the_study_goes_on(tiny_registry, data, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    import zoo.training.train

    train = zoo.training.train.train

    def crashing(cfg, **kwargs):
        if cfg.name == "trial-0001":
            raise RuntimeError("a trial that crashes")
        return train(cfg, **kwargs)

    monkeypatch.setattr(zoo.training.train, "train", crashing)
    result = tune(_plan(data, tmp_path, pruner="none"), trials=3, final=False)
    assert [t["state"] for t in result.trials] == ["complete", "fail", "complete"]
    assert result.trials[1]["reason"] == "RuntimeError: a trial that crashes"
    assert result.best["number"] in (0, 2)


@pytest.mark.slow
def test_the_median_pruner_stops_a_poor_trial_after_an_epoch(tiny_registry, data, tmp_path):
    import optuna

    plan = _plan(data, tmp_path, space=None, fixed={"epochs": 4})
    plan.params = [p for p in plan.params if p.name == "lr"]
    plan.fixed["epochs"] = 4
    Path(plan.folder).mkdir(parents=True)
    study = optuna.create_study(study_name=plan.study, storage=plan.storage, direction="maximize")
    for lr in (0.1, 0.1, 0.1, 0.1, 0.1):  # five good trials, then one that cannot learn
        study.enqueue_trial({"lr": lr})
    study.enqueue_trial({"lr": 1e-7})
    result = tune(plan, trials=6, final=False, resume=True)
    last = result.trials[-1]
    assert last["state"] == "pruned" and last["epochs_reported"] < 4 and "pruned after epoch" in last["reason"]


@pytest.mark.slow
def test_tune_cli_show_space_and_bad_input(tiny_registry, data, tmp_path):
    out = str(tmp_path / "out")
    shown = runner.invoke(app, ["tune", "tiny", str(data), "--policy", "finetune", "--show-space", "--out", out])
    assert shown.exit_code == 0 and "[lr]\nlow = 1e-05\nhigh = 0.003\nlog = true" in shown.output
    (tmp_path / "s.toml").write_text(shown.output)
    assert [p.name for p in read_space(tmp_path / "s.toml")] == ["lr", "weight_decay", "label_smoothing", "epochs"]
    args = ["tune", "tiny", str(data), "--weights", "none", "--policy", "feature-extract", "--out", out]
    for bad, message in (
        (["--trials", "0"], "--trials 0"),
        (["--workers", "0"], "--workers 0"),
        (["--timeout", "nan"], "--timeout nan"),
        (["--pruner", "asha", "--study", "s1"], "--pruner asha"),
        (["--storage", "nosuchdb://x", "--study", "s2"], "--storage nosuchdb://x: cannot open it"),
        (["--resume", "--study", "never"], "no study 'never'"),
        (["--space", str(tmp_path / "missing.toml"), "--study", "s3"], "cannot read it"),
        (["--lr", "-1"], "--lr -1"),
    ):
        result = runner.invoke(app, [*args, *bad])
        assert result.exit_code == 2 and message in result.output, (bad, result.output)
        assert "Traceback" not in result.output


@pytest.mark.slow
def test_tune_cli_runs_a_study_then_refuses_to_start_it_again(tiny_registry, data, tmp_path):
    args = ["tune", "tiny", str(data), "--weights", "none", "--policy", "feature-extract", "--out", str(tmp_path)]
    ran = runner.invoke(app, [*args, "--trials", "2", "--epochs", "2", "--json"])
    assert ran.exit_code == 0, ran.output
    result = json.loads(ran.stdout)
    assert len(result["trials"]) == 2 and result["final"]["run_dir"].endswith("best")
    again = runner.invoke(app, [*args, "--trials", "1"])
    assert again.exit_code == 2 and "--resume continues it" in again.output
    more = runner.invoke(app, [*args, "--trials", "1", "--epochs", "2", "--resume", "--no-final", "--json"])
    assert more.exit_code == 0 and len(json.loads(more.stdout)["trials"]) == 3


class IntegrityError(Exception):  # the name sqlalchemy gives a duplicate schema-version row
    pass


@pytest.mark.parametrize("lost", [RuntimeError("(sqlite3.OperationalError) table studies already exists"),
                                  IntegrityError("UNIQUE constraint failed: alembic_version.version_num")])  # fmt: skip
def test_a_worker_that_loses_the_race_to_create_the_tables_opens_the_study_again(tmp_path, monkeypatch, lost):
    """Workers started together on a new database: the one whose CREATE TABLE comes second opens it again."""
    import optuna

    from zoo.select.tune import StudyPlan, open_study

    real, calls = optuna.create_study, []

    def racing(**kwargs):
        calls.append(kwargs["study_name"])
        if len(calls) == 1:
            raise lost
        return real(**kwargs)

    monkeypatch.setattr(optuna, "create_study", racing)
    plan = StudyPlan(backbone="tiny", data=str(tmp_path), fixed={}, params=[], metric="accuracy",
                     storage=f"sqlite:///{tmp_path / 'new.db'}", study="s", folder=str(tmp_path / "study"))  # fmt: skip
    assert open_study(plan, create=True).study_name == "s" and calls == ["s", "s"]
    calls.clear()

    def broken(**kwargs):
        calls.append(1)
        raise RuntimeError("no such driver")

    monkeypatch.setattr(optuna, "create_study", broken)
    with pytest.raises(UsageError, match=r"cannot open it.*no such driver"):
        open_study(plan, create=True)
    assert calls == [1]  # other errors are not retried


@pytest.mark.slow
def test_two_processes_on_one_storage_share_the_study_without_duplicates(tmp_path):
    """Two `zoo tune` processes started against the same sqlite storage: one study, each trial once."""
    import optuna

    plugins = install_tiny_plugin(tmp_path / "plugins")
    data = make_images(tmp_path / "data", per_class=8, size=32)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    env_code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(plugins)!r})
        from zoo.cli import main
        sys.argv = ["zoo"] + sys.argv[1:]
        main()
    """)
    args = ["tune", "tiny", str(data), "--weights", "none", "--policy", "feature-extract", "--epochs", "2",
            "--storage", storage, "--study", "shared", "--trials", "3", "--no-final", "--json"]  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", env_code, *args, "--out", str(tmp_path / f"w{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == 6 and sorted(numbers) == list(range(6))
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 6  # no trial's options sampled twice


@pytest.mark.slow
def test_ctrl_c_leaves_the_study_consistent_and_resumable(tiny_registry, data, tmp_path, monkeypatch):
    import optuna

    import zoo.training.train
    from zoo.core.errors import Interrupted

    train = zoo.training.train.train

    def interrupted(cfg, **kwargs):
        if cfg.name == "trial-0001":
            raise Interrupted("interrupted by SIGINT; nothing of this trial was kept", "SIGINT")
        return train(cfg, **kwargs)

    monkeypatch.setattr(zoo.training.train, "train", interrupted)
    plan = _plan(data, tmp_path, pruner="none")
    with pytest.raises(KeyboardInterrupt):  # the study stops; the CLI answers it as Ctrl-C (exit 130)
        tune(plan, trials=5)
    study = optuna.load_study(study_name=plan.study, storage=plan.storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    monkeypatch.setattr(zoo.training.train, "train", train)
    result = tune(plan, trials=2, resume=True, final=False)
    assert [t["state"] for t in result.trials] == ["complete", "fail", "complete", "complete"]
