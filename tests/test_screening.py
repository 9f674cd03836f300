"""data.labeled_filter = "solved": RL samples only the labeled problems the start model solves greedily."""

import json
import os
import shutil
from pathlib import Path

import pytest

from rlkd.config import ConfigError, load_config
from rlkd.data import build_pools
from rlkd.models import model_cache_key
from rlkd.screening import solved_labeled
from rlkd.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"


def _cfg(tmp_path: Path, model: Path, *overrides: str):
    return load_config(TINY, [f"run.output_dir={json.dumps(str(tmp_path / 'runs'))}", "run.torch_threads=1",
                              f"model.name_or_path={json.dumps(str(model))}", f"judge.name_or_path={json.dumps(str(model))}",
                              "judge.abstain_threshold=0", 'data.labeled_filter="solved"', "train.steps=2",
                              "train.eval_every=0", *overrides])


def test_the_filter_keeps_the_problems_answered_right_and_rl_samples_only_those(tmp_path, tiny_model_path, monkeypatch):
    monkeypatch.setenv("RLKD_CACHE", str(tmp_path / "cache"))
    student = tmp_path / "student"  # a local directory the test may overwrite
    shutil.copytree(tiny_model_path, student)
    cfg = _cfg(tmp_path, student)
    labeled = build_pools(cfg.data, seed=cfg.run.seed).labeled
    # A random tiny student solves nothing: a clear error naming the key, not an empty pool.
    with pytest.raises(ValueError, match='labeled_filter = "solved": the start model solves none of the 4'):
        train(cfg)
    assert not list((tmp_path / "runs").glob("*")), "a failed start leaves no run directory"
    # Its greedy answers were screened once and cached; mark one right, as a real student's would be.
    (cached,) = (tmp_path / "cache" / "evals").glob("*.json")
    data = json.loads(cached.read_text())
    assert [r["id"] for r in data["rows"]] == [e.id for e in labeled]
    data["rows"][2]["verdict"] = "Equal"
    cached.write_text(json.dumps(data))
    assert [e.id for e in solved_labeled(cfg, str(student), model_cache_key(str(student)), labeled,
                                         log=lambda *_: None)] == [labeled[2].id]

    run_dir = train(cfg)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    labeled_questions = {s["question"] for s in samples if s["gold"] is not None}
    assert labeled_questions == {labeled[2].question}
    assert any(s["gold"] is None for s in samples), "the unlabeled half is untouched"

    # New weights saved into the same folder are a new start model: screened again, not read from the cache.
    weights = next(student.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="solves none of the 4"):
        train(cfg)


def test_the_filter_needs_labeled_prompts(tmp_path):
    with pytest.raises(ConfigError, match="data.labeled_filter"):
        load_config(TINY, ['data.labeled_filter="solved"', "data.labeled_fraction=0", "rewards.vr_weight=0"])
