"""rlkd.judge.VLLMJudge (the single-token judge served by vLLM) against rlkd.judge.SingleTokenJudge
on the same rows, and `rlkd-judge --backend vllm`. SmolLM2-135M-Instruct as the judge (real
weights, tokenizer, chat template), bf16 in both. Skipped where vLLM is not installed.
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

from rlkd.config import JudgeSection  # noqa: E402
from rlkd.judge import SingleTokenJudge, VLLMJudge  # noqa: E402
from rlkd.rollout import make_vllm_engine  # noqa: E402

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
