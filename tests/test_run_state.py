"""The run state is saved and restored as one value; the set-up is built once and holds what the loop reads."""

from __future__ import annotations

import dataclasses

import pytest

from zoo.training.state import RunState


def test_the_run_state_round_trips_through_a_checkpoint():
    state = RunState(
        step=12,
        history=[{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75}],
        best_acc=0.75,
        best_epoch=2,
        best_value=0.7,
        best_report={"acc": 0.75, "thresholds": [0.4, 0.6], "preds": [0, 1]},
        lr_found={"suggestion": 1e-3, "rule": "r", "steps": 20, "stopped": "end of range"},
        best_state={"w": 1},
        test_report={"acc": 1.0},
    )
    ckpt = {**state.to_checkpoint(), "epoch": 2}
    assert ckpt["thresholds"] == [0.4, 0.6]  # read by `zoo evaluate` and `zoo export` without the report
    back = RunState.from_checkpoint(ckpt)
    kept = {f.name for f in dataclasses.fields(RunState)} - {"best_state", "test_report", "start_epoch"}
    assert {k: getattr(back, k) for k in kept} == {k: getattr(state, k) for k in kept}
    assert back.start_epoch == 2  # a resumed run continues with the next epoch
    assert back.best_state is None and back.test_report is None  # best.pt holds the weights; the test runs again


def test_a_checkpoint_from_before_best_value_and_best_report_still_restores():
    old = {"step": 3, "epoch": 1, "history": [{"epoch": 1}], "best_val_acc": 0.6, "best_epoch": 1, "best_preds": [1]}
    back = RunState.from_checkpoint(old)
    assert back.best_value == 0.6 and back.best_report == {"preds": [1]} and back.lr_found is None


@pytest.mark.plots
def test_labels_the_font_lacks_draw_without_a_warning(tmp_path):
    """Emoji class names: matplotlib draws boxes and warns per glyph; the run's pictures keep that off the console."""
    import warnings

    from zoo.training import plots

    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.5, "train_acc": 0.5}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.write_all(
            tmp_path, history, ["🐝 bee", "🐜 ant"], [], {"confusion_matrix": [[1, 0], [0, 1]], "preds": []}, {}
        )
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert not [w for w in caught if "Glyph" in str(w.message)]
