import json

import pytest

from rlkd.runlog import RunLog


def test_metrics_are_json_lines_with_nan_as_null(tmp_path):
    log = RunLog(tmp_path)
    log.log_metrics(1, {"reward/total": 0.5, "judge/vr_auroc": float("nan")})
    log.log_metrics(2, {"reward/total": 0.7})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "reward/total": 0.5, "judge/vr_auroc": None}, {"step": 2, "reward/total": 0.7}]


def test_truncate_from_drops_steps_that_will_be_redone(tmp_path):
    log = RunLog(tmp_path)
    for step in (1, 2, 3):
        log.log_metrics(step, {"x": step})
        log.log_samples(step, [{"response": "r"}])
    log.truncate_from(3)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert [json.loads(line)["step"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()] == [1, 2]


def test_tensorboard_writer_or_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"rlkd\[logging\]"):
            RunLog(tmp_path, tensorboard=True)
        return
    log = RunLog(tmp_path, tensorboard=True)
    log.log_metrics(1, {"reward/total": 0.5})
    log.close()
    assert any((tmp_path / "tensorboard").iterdir())
