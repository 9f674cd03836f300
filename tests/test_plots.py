"""rlkd-plot: PNG curves from a run's metrics.jsonl, with missing / null values skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkd.plots import load_metrics, main, plot_run, series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL = ["reward", "vr_accuracy", "eval_pass1", "judge", "kl", "response_length", "time", "overview"]


def _step(step: int, **extra) -> dict:
    rec = {
        "step": step, "reward/total": 0.3 + 0.05 * step, "reward/vr": 0.2 + 0.04 * step, "reward/judge": 0.5,
        "vr/accuracy": 0.1 * step, "vr/no_answer_rate": 0.2, "judge/vr_auroc": 0.6 + 0.02 * step,
        "judge/vr_agreement": 0.7, "judge/abstain_rate": 0.0, "update/kl": 0.001 * step, "update/approx_kl": 0.0,
        "response/length_mean": 100.0 + step, "response/length_max": 160, "time/rollout_s": 20.0,
        "time/judge_s": 15.0, "time/verify_s": 0.01, "time/update_s": 30.0,
    }
    rec.update(extra)
    return rec


def _write(run: Path, records: list[dict], tail: str = "") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    records = [{"step": 0, "event": "eval", "eval/pass@1": 0.25, "time/eval_s": 40.0}]
    for s in range(1, 7):
        extra = {}
        if s == 2:
            extra = {"judge/vr_auroc": None, "reward/judge": None}  # NaN logged as null: skipped
        if s == 3:
            extra = {"time/judge_s": None, "update/kl": True}  # a bool is not a number
        records.append(_step(s, **extra))
        if s % 3 == 0:
            records.append({"step": s, "event": "eval", "eval/pass@1": 0.25 + 0.05 * s, "time/eval_s": 40.0})
    return _write(tmp_path / "run-1", records, tail='{"step": 7, "reward/to')  # a line still being written


def test_plot_run_writes_every_panel(run, capsys):
    paths = plot_run(run)
    assert [p.stem for p in paths] == ALL
    for p in paths:
        assert p.parent == run / "plots"
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    assert main([str(run)]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(run / "plots" / f"{name}.png") for name in ALL]


def test_missing_and_null_values_are_skipped(run):
    steps, evals = load_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert series(steps, "judge/vr_auroc")[0] == [1, 3, 4, 5, 6]
    assert series(steps, "update/kl")[0] == [1, 2, 4, 5, 6]
    assert series(steps, "reward/rerank") == ([], [])
    assert series(evals, "eval/pass@1")[1] == pytest.approx([0.25, 0.4, 0.55])


def test_panels_without_data_are_not_written(tmp_path):
    run = _write(tmp_path / "r", [{"step": 1, "reward/total": 0.5}, {"step": 2, "reward/total": None},
                                  {"step": 3, "reward/total": 0.7, "update/kl": None}])
    paths = plot_run(run, tmp_path / "out")
    assert [p.name for p in paths] == ["reward.png", "overview.png"]
    assert all(p.parent == tmp_path / "out" and p.stat().st_size > 0 for p in paths)


def test_a_resumed_step_keeps_its_last_record(tmp_path):
    run = _write(tmp_path / "r", [_step(1), _step(2, **{"reward/total": 9.0}), _step(2)])
    steps, _ = load_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in steps] == [1, 2] and steps[1]["reward/total"] == pytest.approx(0.4)


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    _write(tmp_path / "empty", [])
    assert main([str(tmp_path / "empty")]) == 1
    assert "no plottable metrics" in capsys.readouterr().err
