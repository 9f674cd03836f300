"""rlkd-ablate on the tiny config: runs the settings, is resumable, writes the table and plot."""

import json
from pathlib import Path

import pytest

from rlkd.ablate import SETTINGS, main, setting_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"


def test_settings_differ_only_in_the_reward_mix(tmp_path):
    cfgs = {s: setting_config(TINY, [], s, tmp_path) for s in SETTINGS}
    assert (cfgs["rlvr"].rewards.vr_weight, cfgs["rlvr"].rewards.judge_weight, cfgs["rlvr"].data.labeled_fraction) == (1.0, 0.0, 1.0)
    assert (cfgs["semi"].rewards.vr_weight, cfgs["semi"].rewards.judge_weight) == (0.5, 0.5)
    assert (cfgs["judge_only"].rewards.vr_weight, cfgs["judge_only"].rewards.judge_weight) == (0.0, 1.0)
    assert cfgs["rlvr"].train == cfgs["semi"].train == cfgs["judge_only"].train
    assert cfgs["rlvr"].sft == cfgs["semi"].sft


@pytest.mark.slow
def test_ablation_runs_resumes_and_reports(tmp_path, smollm2_path):
    out = tmp_path / "abl"
    args = [str(TINY), "--out", str(out), "--only", "rlvr", "--only", "judge_only", "--set", "train.steps=1",
            "--set", "train.eval_every=1", "--set", "train.checkpoint_every=1"]
    assert main(args) == 0
    table = (out / "ablation.md").read_text()
    assert "| rlvr | 1 |" in table and "| judge_only | 1 |" in table
    assert (out / "ablation.png").stat().st_size > 0
    runs = sorted(p.name.split("-")[0] for p in out.iterdir() if p.is_dir())
    assert runs == ["judge_only", "rlvr"]
    # Resumable: a second call finds both settings done and trains nothing.
    before = {p: (p / "metrics.jsonl").read_text() for p in out.iterdir() if p.is_dir()}
    assert main(args) == 0
    assert {p: (p / "metrics.jsonl").read_text() for p in before} == before
    cmp = json.loads(next(out.glob("rlvr-*/comparison.json")).read_text())
    assert cmp["end_step"] == 1


def test_bad_override_exits_2(tmp_path, capsys):
    assert main([str(TINY), "--out", str(tmp_path), "--set", "train.steps=0"]) == 2
    assert "train.steps" in capsys.readouterr().err
