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


def test_truncate_from_drops_a_torn_last_line(tmp_path):
    """A run killed mid-write leaves half a record at the end: resume drops it instead of crashing."""
    log = RunLog(tmp_path)
    for step in (1, 2, 3):
        log.log_metrics(step, {"x": step})
    with log.metrics_path.open("a") as f:
        f.write('{"step": 4, "reward/to')  # the kill
    with log.samples_path.open("a") as f:
        f.write('{"step": 1, "response": "r"}\n{"st')
    log.truncate_from(3)
    assert log.metrics_path.read_text() == '{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n'
    assert log.samples_path.read_text() == '{"step": 1, "response": "r"}\n'
    log.log_metrics(3, {"x": 3})  # the resumed run appends whole lines after it
    assert [json.loads(line)["step"] for line in log.metrics_path.read_text().splitlines()] == [1, 2, 3]


def test_truncate_from_keeps_a_line_it_cannot_read_unless_it_is_the_last(tmp_path):
    log = RunLog(tmp_path)
    log.metrics_path.write_text('{"step": 1}\nnot json\n[1, 2]\n{"step": 5}\n{"step"')
    log.truncate_from(2)
    assert log.metrics_path.read_text() == '{"step": 1}\nnot json\n[1, 2]\n'


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
