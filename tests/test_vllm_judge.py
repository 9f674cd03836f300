"""rlkd.judge.VLLMJudge (the single-token judge served by vLLM) against rlkd.judge.SingleTokenJudge
on the same rows, the teacher's reference answers through the same engine against the HF teacher's,
`rlkd-judge --backend vllm`, and `rlkd-train` with `judge.backend = "vllm"`. SmolLM2-135M-Instruct as
the judge (real weights, tokenizer, chat template). Skipped where vLLM is not installed.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rlkd.config import Config, JudgeSection, load_config  # noqa: E402
from rlkd.judge import SingleTokenJudge, TeacherReferences, VLLMJudge, local_judge_from_config  # noqa: E402
from rlkd.rollout import HFRollout, VLLMSampler, make_vllm_engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

QUESTION_A = "Tom has 3 apples and buys 4 more. How many apples does he have?"
QUESTION_B = "A train travels 60 km in 1.5 hours. What is its average speed in km/h?"
ROWS = [  # (question, response, reference): G responses share their question's prefix
    (QUESTION_A, "3 + 4 = 7. The answer is \\boxed{7}.", "7"),
    (QUESTION_A, "3 * 4 = 12. The answer is \\boxed{12}.", "7"),
    (QUESTION_A, "He has \\boxed{7} apples.", "7"),
    (QUESTION_A, "Let me solve this step by step.", "7"),  # no final answer: gated
    (QUESTION_B, "60 / 1.5 = 40, so \\boxed{40} km/h.", "40"),
    (QUESTION_B, "60 * 1.5 = 90. The answer is \\boxed{90}.", "40"),
]
R_TOL = 0.05  # bf16 logits on two kernels; P(Yes)/(P(Yes)+P(No)) moves by a few hundredths at most


@pytest.fixture(scope="module")
def llm(smollm2_path: Path):
    engine = make_vllm_engine(str(smollm2_path), dtype="bfloat16", seed=0, enable_prefix_caching=True, max_model_len=1025)
    yield engine
    del engine
    gc.collect()


def _judges(llm, smollm2_path: Path, **kwargs):
    d = JudgeSection()
    common = dict(template=d.template, system_prompt=d.system_prompt, yes_words=d.yes_words, no_words=d.no_words,
                  max_len=1024, **kwargs)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_path), dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    return SingleTokenJudge(model, tok, **common), VLLMJudge(llm, **common)


def test_vllm_judge_matches_the_hf_judge(llm, smollm2_path):
    hf, vj = _judges(llm, smollm2_path, abstain_threshold=0.0)  # small judge: its Yes/No mass is low
    assert (vj.yes_ids, vj.no_ids) == (hf.yes_ids, hf.no_ids)
    q, r, ref = (list(c) for c in zip(*ROWS))
    a, b = hf.score(q, r, ref), vj.score(q, r, ref)
    assert a.gated.tolist() == b.gated.tolist() == [False, False, False, True, False, False]
    assert a.abstained.tolist() == b.abstained.tolist()
    assert b.reward[3] == 0.0
    live = ~a.gated
    np.testing.assert_allclose(b.reward[live], a.reward[live], atol=R_TOL)
    mass_a, mass_b = a.p_yes + a.p_no, b.p_yes + b.p_no
    np.testing.assert_allclose(mass_b[live], mass_a[live], rtol=0.1, atol=0.01)
    # Same packed prompts: the truncation count agrees too.
    assert a.num_truncated == b.num_truncated


def test_vllm_judge_abstains_by_the_same_rule(llm, smollm2_path):
    hf, vj = _judges(llm, smollm2_path, abstain_threshold=0.999)  # no 135M judge is this sure
    q, r, ref = (list(c) for c in zip(*ROWS))
    a, b = hf.score(q, r, ref), vj.score(q, r, ref)
    assert a.abstained.tolist() == b.abstained.tolist() == [True, True, True, False, True, True]
    assert np.isnan(b.reward[~b.gated]).all()


def test_rlkd_judge_cli_with_the_vllm_backend(tmp_path: Path, smollm2_path: Path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": q, "response": r, "gold": g}) + "\n" for q, r, g in ROWS))
    cmd = [str(Path(sys.executable).parent / "rlkd-judge"), str(smollm2_path), "--data", str(data), "--backend", "vllm",
           "--out", str(tmp_path / "out"), "--abstain-threshold", "0", "--max-len", "512", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "judge.json").read_text())
    assert report["backend"] == "vllm" and report["dtype"] == "bfloat16"
    assert len(report["rows"]) == len(ROWS)
    assert report["results"]["single_token"]["responses_per_s"] > 0


TEACHER_QUESTIONS = [
    QUESTION_A, QUESTION_B, "What is 12 times 7?", "A box holds 6 eggs. How many eggs are in 5 boxes?",
    "Sara had 20 dollars. She spent 7 dollars on lunch and 5 dollars on a book. How much money does she have left?",
    "What is 100 minus 37?",
]


def _teacher_rows(teacher, tokenizer, cache: Path) -> dict[str, dict]:
    m = Config().model  # the student's prompt, as rlkd-train gives the teacher
    TeacherReferences(teacher, tokenizer, cache, system_prompt=m.system_prompt, user_template=m.user_template).get(
        TEACHER_QUESTIONS)
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    return {r["question"]: r for r in rows}


@pytest.fixture(scope="module")
def llm_fp32(smollm2_path: Path):
    """A second engine in this process (as rollout.backend = judge.backend = "vllm" run), in fp32."""
    engine = make_vllm_engine(str(smollm2_path), dtype="float32", seed=0, enable_prefix_caching=True, max_model_len=1024,
                              enforce_eager=True)
    yield engine
    del engine
    gc.collect()


def test_teacher_references_through_vllm_match_the_hf_teacher(llm_fp32, smollm2_path, tmp_path):
    """Greedy, 128 tokens, fp32 on both sides: the same solution text, `finished` flag and reference
    (the strict answer of a finished solution, else None) on every question. In bf16 this cannot be
    pinned: over 128 greedy tokens the HF teacher's own answers at batch 1 and batch 16 already
    differ on 5 of these 6 questions (a near-tie argmax flips), and vLLM's on 4-5."""
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_path), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    hf = _teacher_rows(HFRollout(model, tok, max_new_tokens=128, batch_size=16), tok, tmp_path / "hf.jsonl")
    vl = _teacher_rows(VLLMSampler(llm_fp32, max_new_tokens=128), llm_fp32.get_tokenizer(), tmp_path / "vllm.jsonl")
    for q in TEACHER_QUESTIONS:
        assert (vl[q]["solution"], vl[q]["finished"], vl[q]["reference"]) == (
            hf[q]["solution"], hf[q]["finished"], hf[q]["reference"]), q
    # both branches of the rule are exercised: finished with an answer, and cut off (None)
    assert any(r["reference"] is not None for r in vl.values()) and any(not r["finished"] for r in vl.values())
    for row in vl.values():
        assert row["reference"] == TeacherReferences.reference_of(row["solution"], row["finished"])


@pytest.mark.slow
@pytest.mark.parametrize("rollout_backend", ["hf", "vllm"])
def test_rlkd_train_with_the_vllm_judge(tmp_path: Path, smollm2_path: Path, rollout_backend: str):
    """`rlkd-train configs/tiny.toml --set judge.backend=vllm` (fp32 judge engine), with HF rollouts
    and with vLLM rollouts (two engines in one process): two steps; every judged sample's r and
    P(Yes)+P(No) equal the HF judge's on the same rows, and the teacher's solutions (same engine)
    equal the HF teacher's."""
    sets = ['judge.backend="vllm"', f'rollout.backend="{rollout_backend}"', "judge.abstain_threshold=0.0",
            'judge.calibration="none"', "judge.teacher_max_new_tokens=48",
            f"judge.reference_cache={json.dumps(str(tmp_path / 'teacher.jsonl'))}",
            "train.eval_every=0", f"run.output_dir={json.dumps(str(tmp_path / 'runs'))}"]  # fmt: skip
    cmd = [str(Path(sys.executable).parent / "rlkd-train"), str(ROOT / "configs" / "tiny.toml")]
    for item in sets:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next((tmp_path / "runs").iterdir())
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps if "event" not in m] == [1, 2]
    assert all(m["time/judge_s"] > 0 for m in steps if "event" not in m)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    judged = [s for s in samples if s["reference"] is not None]
    assert judged and all(s["judge"] is not None for s in judged)  # abstain_threshold 0: every judged row scores

    cfg = load_config(ROOT / "configs" / "tiny.toml", [*sets[1:], 'judge.backend="hf"'])  # the run's judge, on HF
    hf_judge, hf_teacher = local_judge_from_config(cfg)
    assert isinstance(hf_judge, SingleTokenJudge) and not isinstance(hf_judge, VLLMJudge)
    a = hf_judge.score([s["question"] for s in judged], [s["response"] for s in judged], [s["reference"] for s in judged])
    # fp32 on both sides: agreement to float rounding, far inside the bf16 tolerance
    np.testing.assert_allclose([s["judge"] for s in judged], a.reward, atol=1e-3)
    np.testing.assert_allclose([s["judge_mass"] for s in judged], a.p_yes + a.p_no, rtol=1e-2, atol=1e-4)

    vl = {r["question"]: r for r in map(json.loads, (tmp_path / "teacher.jsonl").read_text().splitlines())}
    m = cfg.model
    TeacherReferences(hf_teacher, hf_judge.tokenizer, tmp_path / "hf_teacher.jsonl", system_prompt=m.system_prompt,
                      user_template=m.user_template, template_kwargs=dict(cfg.judge.teacher_template_kwargs)).get(list(vl))
    hf = {r["question"]: r for r in map(json.loads, (tmp_path / "hf_teacher.jsonl").read_text().splitlines())}
    assert vl and {q: (r["solution"], r["finished"], r["reference"]) for q, r in vl.items()} == {
        q: (r["solution"], r["finished"], r["reference"]) for q, r in hf.items()}
