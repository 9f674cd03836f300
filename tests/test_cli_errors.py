"""The one error path of the four CLIs, run as users run them (subprocesses of the installed
console scripts): bad input is one line `PROG: error: ...` on stderr and exit 2, before any
model is loaded."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
BIN = Path(sys.executable).parent


def run(prog: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / prog), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def assert_user_error(result: subprocess.CompletedProcess[str], prog: str, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "What is 2 + 2?", "answer": "#### 4"}\n')
    return path


def test_eval_out_pointing_at_a_file_fails_before_generation(tmp_path: Path, data_file: Path) -> None:
    existing = tmp_path / "results.json"
    existing.write_text("keep me")
    result = run("rlkd-eval", "embedded:smollm2-135m-instruct", "--data", data_file, "--out", existing)
    assert_user_error(result, "rlkd-eval", "--out", "is a file")
    assert existing.read_text() == "keep me"


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--temperature", "nan", "--temperature"), ("--top-p", "1.5", "--top-p"), ("--dtype", "int8", "unknown dtype"),
    ("--device", "gpu0", "not a device"), ("--verify-timeout", "0", "--verify-timeout"),
])  # fmt: skip
def test_eval_bad_runtime_values_fail_before_loading(data_file: Path, flag: str, value: str, needle: str) -> None:
    result = run("rlkd-eval", "embedded:smollm2-135m-instruct", "--data", data_file, flag, value)
    assert_user_error(result, "rlkd-eval", needle)


def test_train_run_name_cannot_leave_output_dir(tmp_path: Path) -> None:
    result = run("rlkd-train", TINY, "--set", 'run.name="../../etc"', "--set", f"run.output_dir={str(tmp_path)!r}")
    assert result.returncode == 2 and "run.name" in result.stderr and "plain name" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_output_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("")
    result = run("rlkd-train", TINY, "--set", f"run.output_dir={str(tmp_path / 'runs')!r}")
    assert_user_error(result, "rlkd-train", "run.output_dir", "is a file")


@pytest.mark.parametrize("key", ["judge.backend", "rollout.backend"])
def test_train_vllm_backend_without_vllm_fails_before_loading(tmp_path: Path, key: str) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this Python (tests/test_vllm_*.py run the engine)")
    result = run("rlkd-train", TINY, "--set", f'{key}="vllm"', "--set", f"run.output_dir={str(tmp_path)!r}")
    assert_user_error(result, "rlkd-train", f"{key} = 'vllm': vLLM is not installed", "make install-vllm")
    assert list(tmp_path.iterdir()) == []


def test_train_resume_without_a_checkpoint_fails_before_loading(tmp_path: Path) -> None:
    from rlkd.config import config_to_toml, load_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(config_to_toml(load_config(TINY)))
    result = run("rlkd-train", TINY, "--resume", run_dir)
    assert_user_error(result, "rlkd-train", "--resume", "no checkpoint")


def test_plot_and_judge_use_the_same_path(tmp_path: Path, data_file: Path) -> None:
    assert_user_error(run("rlkd-plot", tmp_path / "nope"), "rlkd-plot")
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    judge_rows = tmp_path / "judge.jsonl"  # a valid judge file (rlkd-judge reads its data before the model)
    judge_rows.write_text('{"question": "What is 2 + 2?", "response": "The answer is 4.", "answer": "#### 4"}\n')
    result = run("rlkd-judge", broken, "--data", judge_rows, "--out", tmp_path / "o")
    assert_user_error(result, "rlkd-judge", "config.json is corrupt")


def test_a_library_error_names_the_rlkd_line_it_came_through(capsys) -> None:
    # numpy's ValueError, raised inside a call from rlkd: the one line says where in rlkd.
    from rlkd.cli_errors import run_cli
    from rlkd.distributed import rollout_seed

    assert run_cli("rlkd-train", lambda: rollout_seed(0, 0, -1)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("rlkd-train: error: ValueError: ")
    assert re.search(r" \(from rlkd/distributed\.py:\d+\)$", line), line
