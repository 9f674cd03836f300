"""End to end: `rlkd-train` on SmolLM2-135M-Instruct (real weights, tokenizer and chat template)
as student and judge, a few steps on CPU."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlkd.cli import train_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
VOLATILE = ("time/", "throughput/", "memory/")  # wall-clock and memory figures differ between any two runs


def _run(tmp_path: Path, *overrides: str, resume: Path | None = None) -> Path:
    args = [str(TINY), "--set", f"run.output_dir={json.dumps(str(tmp_path))}", "--set", "run.torch_threads=2"]
    for item in overrides:
        args += ["--set", item]
    if resume is not None:
        args += ["--resume", str(resume)]
    assert train_main(args) == 0
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    return resume if resume is not None else runs[-1]


def _steps(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "event" not in m]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, smollm2_path) -> Path:
    return _run(tmp_path_factory.mktemp("grpo"))


@pytest.mark.slow
def test_grpo_run_logs_finite_losses_and_every_metric(grpo_run):
    steps = _steps(grpo_run)
    assert [m["step"] for m in steps] == [1, 2]
    assert any(not m.get("update/skipped") for m in steps)  # at least one real update
    for m in steps:
        assert m.get("update/skipped") == 1.0 or np.isfinite(m["loss/total"])  # skipped: no gradient, loss NaN
        for key in ("reward/total", "reward/vr", "reward/judge", "vr/accuracy", "judge/abstain_rate",
                    "judge/vr_agreement", "adv/all_equal_group_rate", "adv/same_correctness_share", "response/length_mean",
                    "time/rollout_s", "time/teacher_s", "time/judge_s", "time/verify_s", "time/update_s",
                    *(() if m.get("update/skipped") else ("update/entropy",))):
            assert key in m, key
        assert 0.0 <= m["judge/abstain_rate"] <= 1.0
        assert 0.1 < m["memory/peak_rss_gb"] < 64  # VmHWM in GB: a real figure, not bytes or KiB
    samples = [json.loads(line) for line in (grpo_run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2 * 2  # steps x prompts x G
    assert {"question", "response", "reward", "judge", "vr", "advantage", "reference", "extracted", "finished",
            "judge_mass"} <= set(samples[0])
    evals = [json.loads(line) for line in (grpo_run / "metrics.jsonl").read_text().splitlines() if "eval" in line]
    assert evals and all("eval/pass@1" in e for e in evals)
    assert (grpo_run / "config.toml").exists()


def test_only_samples_with_a_nonzero_advantage_are_trained_on(grpo_run):
    # GRPO without KL: a zero advantage is a zero gradient, so those samples skip the forward/backward.
    samples = [json.loads(line) for line in (grpo_run / "samples.jsonl").read_text().splitlines()]
    for m in _steps(grpo_run):
        teaching = sum(s["advantage"] != 0 for s in samples if s["step"] == m["step"])
        assert m.get("update/trained_samples", 0.0) == teaching  # absent when the update was skipped


@pytest.mark.slow
def test_teacher_references_come_only_from_finished_solutions(grpo_run):
    # tiny.toml gives the teacher 16 new tokens: SmolLM2 never finishes a solution in 16 tokens,
    # so no unlabeled question has a reference and its judge term abstains (never a guessed number).
    samples = [json.loads(line) for line in (grpo_run / "samples.jsonl").read_text().splitlines()]
    unlabeled = [s for s in samples if s["gold"] is None]
    labeled = [s for s in samples if s["gold"] is not None]
    assert unlabeled and labeled
    assert all(s["reference"] is None and s["judge"] is None for s in unlabeled)  # NaN is null in jsonl
    assert all(s["reference"] == s["gold"] for s in labeled)
    # a labeled sample is judged: gated (no final answer) pays 0 without a forward pass; otherwise
    # its reward is missing only where the judge abstained (low mass)
    assert all(s["judge"] == 0.0 for s in labeled if s["judge_gated"])
    assert all((s["judge"] is None) == (s["judge_mass"] < 0.5) for s in labeled if not s["judge_gated"])
    assert all(s["judge_mass"] == 0.0 for s in unlabeled)  # no forward pass at all
    steps = _steps(grpo_run)
    assert all(m["judge/no_reference_rate"] == 0.5 for m in steps)
    events = [json.loads(line) for line in (grpo_run / "metrics.jsonl").read_text().splitlines()]
    teacher = [e for e in events if e.get("event") == "teacher_references"]
    assert teacher and teacher[0]["teacher/no_reference"] == teacher[0]["teacher/questions"] > 0


@pytest.mark.slow
def test_run_ends_with_a_paired_start_vs_end_comparison(grpo_run):
    cmp = json.loads((grpo_run / "comparison.json").read_text())
    assert cmp["start_step"] == 0 and cmp["end_step"] == 2 and cmp["n"] == 2
    assert 0.0 <= cmp["mcnemar_p"] <= 1.0 and cmp["gained"] + cmp["lost"] <= 2


@pytest.mark.slow
def test_checkpoint_loads_in_transformers_and_parameters_changed(grpo_run, smollm2_path):
    ckpt = grpo_run / "checkpoints" / "step-000002"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(model(ids).logits).all()
    trained = load_file(ckpt / "model.safetensors")
    base = load_file(Path(smollm2_path) / "model.safetensors")
    changed = [k for k in trained if k in base and not torch.equal(trained[k].float(), base[k].float())]
    assert changed, "no parameter moved after two RL steps"


@pytest.mark.slow
def test_resume_continues_with_identical_metrics(tmp_path, grpo_run):
    # Stop after step 1, resume to step 2: step 2 must match the uninterrupted run exactly.
    first = _run(tmp_path, "train.steps=1", "train.eval_every=0")
    resumed = _run(tmp_path, "train.steps=2", "train.eval_every=0", resume=first)
    assert "\nsteps = 2\n" in (resumed / "config.toml").read_text()  # the run dir says what the run now is
    want = [m for m in _steps(grpo_run) if m["step"] == 2][0]
    got = [m for m in _steps(resumed) if m["step"] == 2][0]
    for key, value in want.items():
        if key.startswith(VOLATILE):
            continue
        if value is None or isinstance(value, str):  # null = NaN (not measured) in metrics.jsonl
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_ppo_with_value_head_and_kl(tmp_path, smollm2_path):
    run = _run(tmp_path, 'algorithm.name="ppo"', "algorithm.kl_coef=0.05", 'algorithm.kl_estimator="k1"',
               "train.steps=1", "train.eval_every=0", "rewards.vr_weight=1.0", "rewards.judge_weight=0.0",
               "data.labeled_fraction=1.0")
    m = _steps(run)[0]
    assert np.isfinite(m["loss/total"]) and np.isfinite(m["update/value_loss"])
    assert (run / "checkpoints" / "step-000001" / "value_head" / "value_head.safetensors").exists()


def test_config_error_exits_2_naming_the_key(tmp_path, capsys):
    assert train_main([str(TINY), "--set", "rollout.temperature=\"hot\""]) == 2
    assert "rollout.temperature" in capsys.readouterr().err


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from rlkd.config import config_to_toml, load_config

    (run_dir / "config.toml").write_text(config_to_toml(load_config(TINY)))
    assert train_main([str(TINY), "--set", "rollout.group_size=3", "--resume", str(run_dir)]) == 2
    assert "group_size" in capsys.readouterr().err


def test_resume_accepts_a_new_budget_and_cadence(tmp_path):
    # How long a run goes on and how often it evaluates or saves may change on resume; nothing else.
    from rlkd.cli import _check_resume_config
    from rlkd.config import ConfigError, config_to_toml, load_config

    (tmp_path / "config.toml").write_text(config_to_toml(load_config(TINY)))
    _check_resume_config(tmp_path, load_config(TINY, ["train.steps=40", "train.time_budget_min=45.0",
                                                      "train.eval_every=100", "train.checkpoint_every=8",
                                                      "train.keep_checkpoints=0"]))
    with pytest.raises(ConfigError, match="warmup_steps"):
        _check_resume_config(tmp_path, load_config(TINY, ["optim.warmup_steps=3"]))


@pytest.mark.slow
def test_a_crash_mid_run_leaves_a_checkpoint_of_the_finished_steps(tmp_path, monkeypatch, smollm2_path):
    from rlkd.train import Trainer

    real_step = Trainer.train_step

    def crash_on_second_step(self):
        if self.step == 1:
            raise RuntimeError("simulated crash in step 2")
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", crash_on_second_step)
    args = [str(TINY), "--set", f"run.output_dir={json.dumps(str(tmp_path))}", "--set", "train.checkpoint_every=0",
            "--set", "train.eval_every=0", "--set", "train.steps=3"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_main(args)
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    state = json.loads((run_dir / "checkpoints" / "step-000001" / "trainer_state.json").read_text())
    assert state["step"] == 1


@pytest.mark.slow
def test_semi_supervised_mix_with_a_reranker(tmp_path, tiny_model_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reranker = tmp_path / "reranker"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=2)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_model_path).eos_token_id
    model.save_pretrained(reranker)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(reranker)
    runs = tmp_path / "runs"
    run = _run(runs, "rewards.vr_weight=0.5", "rewards.judge_weight=0.25", "rewards.rerank_weight=0.25",
               f"reranker.name_or_path={json.dumps(str(reranker))}", "train.steps=1", "train.eval_every=0")
    m = _steps(run)[0]
    assert 0.0 < m["reward/rerank"] < 1.0
    assert m.get("update/skipped") == 1.0 or np.isfinite(m["loss/total"])  # skipped: no group with a signal
    assert "time/rerank_s" in m


# ---- interrupts: every stop leaves a checkpoint that resumes to the uninterrupted run ----------

class Interrupt(BaseException):  # what Ctrl-C raises is a BaseException too
    pass


def _tiny_cfg(tmp_path: Path, model: Path, *overrides: str):
    from rlkd.config import load_config

    return load_config(TINY, [f"run.output_dir={json.dumps(str(tmp_path))}", "run.torch_threads=1",
                              f"model.name_or_path={json.dumps(str(model))}",
                              f"judge.name_or_path={json.dumps(str(model))}", "judge.abstain_threshold=0",
                              "train.steps=3", "train.checkpoint_every=1", "train.eval_every=2", *overrides])


def _train(cfg, run_dir: Path | None = None, **kw) -> Path:
    from rlkd.train import Trainer, prepare_run_dir

    run_dir = run_dir or prepare_run_dir(cfg)
    Trainer(cfg, run_dir, resume=kw.pop("resume", False), **kw).run()
    return run_dir


def _comparable(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith(VOLATILE)} for m in _steps(run_dir)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_path) -> Path:
    return _train(_tiny_cfg(tmp_path_factory.mktemp("whole"), tiny_model_path))


@pytest.mark.slow
@pytest.mark.parametrize(("point", "every"), [("update", 1), ("log", 1), ("eval", 1), ("checkpoint", 1),
                                              ("update", 0), ("log", 0)])  # fmt: skip
def test_an_interrupt_at_each_point_resumes_to_the_uninterrupted_run(point, every, tmp_path, tiny_model_path,
                                                                     uninterrupted):  # fmt: skip
    from rlkd.train import INTERRUPT_POINTS, prepare_run_dir

    assert point in INTERRUPT_POINTS
    cfg = _tiny_cfg(tmp_path, tiny_model_path, f"train.checkpoint_every={every}")
    run_dir = prepare_run_dir(cfg)

    def stop_in_step_2(at: str, finished_steps: int) -> None:
        # "update" and "log" come before step 2 is finished, "eval" and "checkpoint" after
        in_step = finished_steps + 1 if at in ("update", "log") else finished_steps
        if at == point and in_step == 2:
            raise Interrupt(f"stopped at {at} of step 2")

    with pytest.raises(Interrupt):
        _train(cfg, run_dir, interrupt_hook=stop_in_step_2)
    from rlkd.checkpoint import latest_checkpoint

    saved = json.loads((latest_checkpoint(run_dir) / "trainer_state.json").read_text())
    # Stopped after step 2's update ("update", "log"): step 2 is completed and saved, with or
    # without periodic checkpoints; after step 2 ("eval", "checkpoint"): step 2 is saved.
    assert saved["step"] == 2
    _train(cfg, run_dir, resume=True)
    got, want = _comparable(run_dir), _comparable(uninterrupted)
    assert [m["step"] for m in got] == [1, 2, 3]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key, value in w.items():
            if value is None or isinstance(value, str):
                assert g[key] == value, (g["step"], key)
            else:
                assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (g["step"], key)
    final, whole = (load_file(r / "checkpoints" / "step-000003" / "model.safetensors") for r in (run_dir, uninterrupted))
    for name, tensor in whole.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_an_empty_update_still_steps_the_lr_schedule(tmp_path, tiny_model_path):
    # abstain_threshold 1: the judge abstains on every sample, so every reward is NaN and every
    # update is empty; warm-up must still advance, one step per training step.
    cfg = _tiny_cfg(tmp_path, tiny_model_path, "judge.abstain_threshold=1", "optim.warmup_steps=4",
                    "train.eval_every=0", "train.checkpoint_every=0")
    steps = _steps(_train(cfg))
    assert [m["update/skipped"] for m in steps] == [1.0, 1.0, 1.0]
    lr = cfg.optim.lr
    assert [m["lr"] for m in steps] == pytest.approx([lr * 2 / 4, lr * 3 / 4, lr * 4 / 4])


def test_all_equal_groups_skip_the_update_and_leave_the_weights(tmp_path, tiny_model_path, recwarn):
    # One-token responses, no answer marker: every reward is no_answer (0), every group advantage is 0,
    # so there is no gradient; no forward/backward runs and AdamW's momentum does not move the weights.
    from rlkd.train import Trainer, prepare_run_dir

    cfg = _tiny_cfg(tmp_path, tiny_model_path, "rewards.vr_weight=1.0", "rewards.judge_weight=0.0",
                    "data.labeled_fraction=1.0", "rollout.max_new_tokens=1", "rewards.truncated_needs_marker=true",
                    "train.steps=2", "train.eval_every=0", "train.checkpoint_every=0")
    trainer = Trainer(cfg, prepare_run_dir(cfg))
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    trainer.run()
    assert [m["update/skipped"] for m in _steps(trainer.run_dir)] == [1.0, 1.0]
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]  # a skipped update is no misuse


def test_judge_only_run_reports_the_hacking_monitor(tmp_path, smollm2_path, capsys):
    """λ = 0 with the gate off: the monitor's metrics are in metrics.jsonl, and its warnings in stderr."""
    run = _run(tmp_path, "rewards.vr_weight=0.0", "rewards.judge_weight=1.0", "judge.answer_gate=false",
               "judge.abstain_threshold=0.0", "monitor.disagreement_limit=0.01", "train.eval_every=0",
               "judge.calibration_min_samples=2")  # fmt: skip
    steps = _steps(run)
    for m in steps:
        for key in ("monitor/paid_no_answer_rate", "monitor/judge_vr_disagreement", "monitor/length_ratio",
                    "monitor/repeat_rate", "monitor/gated_rate", "monitor/all_abstained", "monitor/alert",
                    "calib/fitted", "calib/decision_point"):
            assert key in m, key
        assert m["monitor/gated_rate"] == 0.0 and m["monitor/all_abstained"] == 0.0
    err = capsys.readouterr().err
    alerts = [m for m in steps if m["monitor/alert"] == 1.0]
    assert len(alerts) == err.count("rlkd: WARNING step")  # one line per alert on stderr, flagged in the log


def test_monitor_stop_on_alert_and_an_all_abstaining_judge_say_so(tmp_path, smollm2_path, capsys):
    code = train_main([str(TINY), "--set", f"run.output_dir={json.dumps(str(tmp_path))}", "--set", "run.torch_threads=2",
                       "--set", "judge.answer_gate=false", "--set", "judge.abstain_threshold=1.0",
                       "--set", "monitor.stop_on_alert=true", "--set", "train.eval_every=0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "ABSTAINED on every sample" in err and "stopped by the hacking monitor" in err
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (step,) = _steps(run)
    assert step["monitor/all_abstained"] == 1.0 and step["monitor/alert"] == 1.0


@pytest.mark.slow
def test_time_budget_starts_no_step_that_would_end_past_it(tmp_path, smollm2_path):
    run = _run(tmp_path, "train.steps=3", "train.time_budget_min=0.0001", "train.eval_every=0")
    assert [m["step"] for m in _steps(run)] == [1]  # the first step always runs; the second would not fit
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "train_done" for e in events)
    assert (run / "checkpoints" / "step-000001").is_dir()  # saved at the stop


def test_a_failed_start_leaves_no_run_directory(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    missing.mkdir()  # exists (the config check passes) but holds no model: loading fails
    args = [str(TINY), "--set", f"run.output_dir={json.dumps(str(tmp_path / 'runs'))}",
            "--set", f"model.name_or_path={json.dumps(str(missing))}"]
    assert train_main(args) == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_lora_rollout_model_is_the_plain_model_with_the_adapters_merged(tmp_path, tiny_model_path):
    """HF rollouts decode with a plain model (no LoRA layers: faster), synced to the policy's weights."""
    from rlkd.algorithms import token_logprobs
    from rlkd.train import Trainer, prepare_run_dir

    cfg = _tiny_cfg(tmp_path, tiny_model_path, "model.lora_rank=4", "model.lora_alpha=8.0", "model.dtype=\"float32\"",
                    'model.lora_target_modules=["q_proj", "v_proj"]', "optim.lr=0.05", "train.steps=1", "train.eval_every=0")
    trainer = Trainer(cfg, prepare_run_dir(cfg))
    trainer.run()
    engine = trainer.rollout.model
    assert not any("lora" in name for name, _ in engine.named_parameters())
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = token_logprobs(trainer.policy, ids, mask)[0]
        got = token_logprobs(engine, ids, mask)[0]
    assert torch.allclose(got, want, atol=1e-5)
    base = _plain(tiny_model_path)
    with torch.no_grad():
        assert not torch.allclose(token_logprobs(base, ids, mask)[0], want, atol=1e-4)  # the update moved it


def _plain(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
