"""The judge-robustness suite: its rows, and `rlkd-judge --adversarial` end to end (tiny model)."""

import json

import numpy as np
import pytest

from rlkd import _core
from rlkd.adversarial import ANSWER_FREE, CATEGORIES, LABEL_NO, build_suite, gsm8k_questions
from rlkd.judge_cli import main


def test_suite_is_built_on_real_gsm8k_questions():
    (q, work, gold), = gsm8k_questions(1)
    assert q.startswith("Janet") and gold == "18" and "<<" not in work and "####" not in work
    rows = build_suite(5)
    assert {r.category for r in rows} == set(CATEGORIES)
    assert all(r.label is False for r in rows if r.category in LABEL_NO)
    assert all(r.label is True for r in rows if r.category in ("correct", "correct_short"))


def test_answer_free_categories_have_no_final_answer_and_the_others_do():
    rows = build_suite(20)
    answers = _core.extract_answers([r.response for r in rows], strict=True)
    for r, a in zip(rows, answers):
        assert (a is None) == (r.category in ANSWER_FREE), (r.category, r.response[:60])


def test_cli_adversarial_tiny_end_to_end(tmp_path, tiny_model_path, capsys):
    out = tmp_path / "adv"
    code = main([str(tiny_model_path), "--adversarial", "--questions", "2", "--out", str(out), "--dtype", "float32",
                 "--device", "cpu", "--no-progress", "--abstain-threshold", "0"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "| opener_en |" in printed
    report = json.loads((out / "adversarial.json").read_text())
    runs = {(r["mode"], r["answer_gate"]): r for r in report["results"]}
    assert set(runs) == {(m, g) for m in ("reference_free", "reference_guided") for g in (False, True)}
    for (mode, gate), r in runs.items():
        for cat in (*ANSWER_FREE, "hedge"):  # no answer, or two different boxed answers: gated
            c = r["categories"][cat]
            assert c["gated"] == (c["n"] if gate else 0)
            if gate:
                assert c["yes_rate"] == 0.0 and c["mean_reward"] == 0.0
    # rows with an answer score the same with or without the gate
    off, on = runs[("reference_guided", False)], runs[("reference_guided", True)]
    for a, b in zip(off["rows"], on["rows"]):
        if not b["gated"]:
            assert a["reward"] == pytest.approx(b["reward"], rel=1e-4)


def test_the_gated_result_is_what_the_gated_judge_returns(tiny_model_path):
    """score_suite scores once with the gate off and derives the gated run: check it against a real gated score."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkd.adversarial import score_suite
    from rlkd.config import JudgeSection
    from rlkd.judge import SingleTokenJudge

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    judge = SingleTokenJudge(model, tok, template=JudgeSection().template, abstain_threshold=0.0)
    rows = build_suite(2)
    off, on = score_suite(judge, rows, mode="reference_guided")
    assert judge.answer_gate and not off["answer_gate"] and on["answer_gate"]
    real = judge.score([r.question for r in rows], [r.response for r in rows], [r.gold for r in rows])
    np.testing.assert_allclose([x["reward"] for x in on["rows"]], real.reward, rtol=1e-4)
    assert [x["gated"] for x in on["rows"]] == real.gated.tolist()


def test_cli_adversarial_errors_exit_2(tmp_path, tiny_model_path, capsys):
    assert main([str(tiny_model_path), "--adversarial", "--data", "x.jsonl"]) == 2
    assert main([str(tiny_model_path), "--adversarial", "--questions", "0"]) == 2
    assert main([str(tiny_model_path)]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "--questions" in err
