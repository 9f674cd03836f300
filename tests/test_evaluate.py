"""rlkd-eval: pass@k / maj@k against hand-computed values, prompts, and the CLI end to end on the
tiny random model (real SmolLM2 tokenizer and chat template) and on an rlkd checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlkd import evaluate as ev
from rlkd.evaluate import EQUAL, NO_ANSWER, UNKNOWN, aggregate, main, majority_vote, pass_at_k

NE = 0  # Verdict.NotEqual

ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A box holds 6 pens. How many pens are in 2 boxes?", "answer": "6 * 2 = <<6*2=12>>12\n#### 12"},
    {"question": "Ann had 10 dollars and spent 4. How much is left?", "answer": "10 - 4 = 6\n#### 6"},
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return _write(tmp_path / "gsm.jsonl", ROWS)


# ------------------------------------------------------------------------------ pure metrics


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 1, 3) == pytest.approx(1 - 4 / 10)  # 1 - C(4,3)/C(5,3)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c/n
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # fewer than k wrong samples: every k-subset has a right one
    assert pass_at_k(4, 4, 1) == 1.0
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)
    assert ev.mean_pass_at_k([0, 2, 4], 4, 2) == pytest.approx((0 + (1 - 1 / 6) + 1) / 3)


def test_majority_vote_ties_go_to_the_first_answer_and_none_never_wins():
    assert majority_vote(["3", "4", None, "4", "3"]) == ("3", 0, 2)
    assert majority_vote([None, "5", "6", "6"]) == ("6", 2, 2)
    assert majority_vote([None, None, "1"]) == ("1", 2, 1)
    assert majority_vote([None, None]) == (None, None, 0)
    assert majority_vote([]) == (None, None, 0)


def test_aggregate_hand_computed():
    v = np.array([
        [EQUAL, NE, EQUAL, NE],  # 2 right; vote "7" (2 votes, first) -> Equal
        [NE, NE, UNKNOWN, UNKNOWN],  # 0 right; vote "x" (3 of 4 samples at k=4) -> first "x" sample is NE
        [NO_ANSWER, NO_ANSWER, NO_ANSWER, NO_ANSWER],  # nothing extracted
    ])
    keys = [["7", "8", "7", "9"], ["x", "y", "x", "x"], [None] * 4]
    s, per = aggregate(v, keys, [1, 2, 4])
    assert s["sample_accuracy"] == pytest.approx(2 / 12)
    assert s["unknown_rate"] == pytest.approx(2 / 12)
    assert s["no_answer_rate"] == pytest.approx(4 / 12)
    assert s["pass@1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert s["pass@2"] == pytest.approx((1 - 1 / 6) / 3)
    assert s["pass@4"] == pytest.approx(1 / 3)
    assert s["maj@1"] == pytest.approx(1 / 3) and s["maj@1_no_answer"] == 1
    # k=2: item 0 votes 7 vs 8 tie -> "7" (Equal); item 1 "x" vs "y" -> "x" (NE)
    assert s["maj@2"] == pytest.approx(1 / 3)
    assert s["maj@4"] == pytest.approx(1 / 3) and s["maj@4_unknown"] == 0 and s["maj@4_no_answer"] == 1
    assert per[0] == {"correct": 2, "vote": "7", "votes": 2, "vote_verdict": "Equal"}
    assert per[1]["vote"] == "x" and per[1]["votes"] == 3 and per[1]["vote_verdict"] == "NotEqual"
    assert per[2]["vote"] is None and per[2]["vote_verdict"] is None


def test_aggregate_counts_an_unknown_vote_separately_not_as_wrong():
    v = np.array([[UNKNOWN, UNKNOWN, EQUAL]])
    s, per = aggregate(v, [["a", "a", "b"]], [3])
    assert s["maj@3"] == 0.0 and s["maj@3_unknown"] == 1
    assert per[0]["vote_verdict"] == "Unknown"
    with pytest.raises(ValueError, match="outside"):
        aggregate(v, [["a", "a", "b"]], [4])


def test_score_verifies_real_responses():
    golds = ["7", "1/2"]
    responses = ["So 3 + 4 = 7. \\boxed{7}", "#### 8", "The answer is \\frac{1}{2}.", "I am not sure."]
    s, per = ev.score(golds, responses, 2, [1, 2])
    assert per[0]["verdicts"] == ["Equal", "NotEqual"]
    assert per[1]["verdicts"] == ["Equal", "NoAnswer"]
    assert per[0]["extracted"] == ["7", "8"]
    assert s["correct"] == 2 and s["no_answer"] == 1 and s["pass@2"] == 1.0 and s["pass@1"] == 0.5


def test_score_follows_the_training_rule_for_cut_off_responses():
    """As in a run's held-out eval: cut off without an explicit answer is NoAnswer, whatever its last number."""
    golds = ["4380"]
    responses = ["1460 + 2920 = 4380 \\text{", "so the total is \\boxed{4380}"]
    _, per = ev.score(golds, responses, 2, [1], finished=[False, False])
    assert per[0]["verdicts"] == ["NoAnswer", "Equal"]
    _, per = ev.score(golds, responses, 2, [1], finished=[True, True])
    assert per[0]["verdicts"] == ["Equal", "Equal"]


def test_default_ks():
    assert ev.default_ks(1) == [1]
    assert ev.default_ks(4) == [1, 2, 4]
    assert ev.default_ks(6) == [1, 2, 4, 6]


# ------------------------------------------------------------------------------ prompts


def test_exemplar_answer_strips_calculator_annotations():
    from rlkd.data import Example

    e = Example(id="a", question="q", answer="12", solution="6 * 2 = <<6*2=12>>12 pens\n#### 12")
    assert ev.exemplar_answer(e) == "6 * 2 = 12 pens\nThe answer is 12."
    assert ev.exemplar_answer(Example(id="b", question="q", answer="3")) == "The answer is 3."


def test_few_shot_prompt_and_stop(tiny_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    shots = ev.few_shot_exemplars(2, None, set())
    b = ev.PromptBuilder(tok, "raw", None, ev.FEW_SHOT_TEMPLATE, shots)
    text = b.text("What is 2 + 2?")
    assert text.startswith("Question: " + shots[0][0] + "\nAnswer: " + shots[0][1] + "\n\nQuestion: ")
    assert text.endswith("Question: What is 2 + 2?\nAnswer:")
    assert b.stop == "\nQuestion:"
    assert b.cut(" 2 + 2 = 4. The answer is 4.\n\nQuestion: next one") == " 2 + 2 = 4. The answer is 4.\n"
    # a response cut at the next exemplar finished there, even if decoding ran on to the budget
    assert b.cut_all([" 4.\n\nQuestion: next", " 4 and then"], [False, False]) == ([" 4.\n", " 4 and then"], [True, False])
    chat = ev.PromptBuilder(tok, "chat", "Be brief.", ev.FEW_SHOT_TEMPLATE, shots)
    rendered = tok.decode(chat.ids(["What is 2 + 2?"])[0])
    assert "Be brief." in rendered and shots[1][0] in rendered and rendered.rstrip().endswith("assistant")
    with pytest.raises(ev.EvalError, match="built-in set has 8"):
        ev.few_shot_exemplars(9, None, set())


# ------------------------------------------------------------------------------ CLI end to end


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_cli_greedy_and_sampling(tiny_model_path, data, tmp_path, capsys):
    out_dir = tmp_path / "ev"
    rc, out, err = _run(capsys, tiny_model_path, "--data", data, "--samples", "4", "--temperature", "1.0",
                        "--max-new-tokens", "8", "--device", "cpu", "--dtype", "float32", "--out", out_dir,
                        "--batch-size", "8", "--no-progress")
    assert rc == 0, err
    assert "greedy pass@1" in out and "pass@4" in out and "maj@4" in out and "wrote" in out
    result = json.loads((out_dir / "eval.json").read_text())
    cfg, summary, items = result["config"], result["summary"], result["items"]
    assert cfg["prompt_mode"] == "chat" and cfg["model_kind"] == "dir" and cfg["ks"] == [1, 2, 4]
    assert "Put your final answer within \\boxed{}" in cfg["prompt_example"]
    g = summary["greedy"]
    assert g["items"] == 3 and g["correct"] + g["unknown"] + g["no_answer"] + g["not_equal"] == 3
    assert 0.0 <= g["pass@1"] <= g["pass@1_if_unknown_correct"] <= 1.0
    assert g["response_tokens_mean"] <= 8
    s = summary["sampled"]
    assert s["samples_per_item"] == 4 and s["items"] == 3
    values = [s[f"pass@{k}"] for k in (1, 2, 4)]
    assert all(0.0 <= x <= 1.0 for x in values) and values == sorted(values)
    assert s["pass@1"] == pytest.approx(s["sample_accuracy"])
    names = {"Equal", "NotEqual", "Unknown", "NoAnswer"}
    assert [it["gold"] for it in items] == ["7", "12", "6"]
    for it in items:
        assert it["greedy"]["verdict"] in names and isinstance(it["greedy"]["response"], str)
        smp = it["samples"]
        assert len(smp["responses"]) == len(smp["extracted"]) == len(smp["verdicts"]) == 4
        assert set(smp["verdicts"]) <= names and 0 <= smp["correct"] <= 4


def _tiny_run_dir(tiny_model_path: Path, run_dir: Path, template: str) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkd.checkpoint import save_checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for step in (1, 3):
        save_checkpoint(run_dir, step, model=model, tokenizer=tok, optimizer=opt, trainer_state={})
    (run_dir / "config.toml").write_text(f'[model]\nsystem_prompt = ""\nuser_template = {json.dumps(template)}\n')
    return run_dir


@pytest.mark.slow
def test_cli_on_rlkd_run_and_checkpoint(tiny_model_path, data, tmp_path, capsys):
    run = _tiny_run_dir(tiny_model_path, tmp_path / "run", "Solve: {question}\nEnd with #### and the number.")
    rc, out, err = _run(capsys, run, "--data", data, "--limit", "2", "--max-new-tokens", "4", "--device", "cpu",
                        "--dtype", "float32", "--no-progress")
    assert rc == 0, err
    written = list((run / "eval").glob("step-000003-gsm-*/eval.json"))
    assert len(written) == 1, list((run / "eval").iterdir())
    result = json.loads(written[0].read_text())
    cfg = result["config"]
    assert cfg["model_kind"] == "run" and cfg["model_path"].endswith("step-000003")
    # the run's own prompt: its user template, and no system message (system_prompt = "")
    assert cfg["user_template"].startswith("Solve: {question}") and cfg["system_prompt"] is None
    assert "Solve: Tom has 3 apples" in cfg["prompt_example"]
    assert result["summary"]["greedy"]["items"] == 2
    # an explicit checkpoint directory, raw few-shot prompting from a file of exemplars
    shots = _write(tmp_path / "shots.jsonl", ROWS)
    rc, out, err = _run(capsys, run / "checkpoints" / "step-000001", "--data", data, "--limit", "1",
                        "--prompt", "raw", "--few-shot", "2", "--few-shot-file", shots, "--max-new-tokens", "4",
                        "--device", "cpu", "--dtype", "float32", "--out", tmp_path / "ev2", "--no-progress")
    assert rc == 0, err
    cfg = json.loads((tmp_path / "ev2" / "eval.json").read_text())["config"]
    assert cfg["model_kind"] == "checkpoint" and cfg["few_shot"] == 2 and cfg["prompt_mode"] == "raw"
    # the evaluated question (row 0) is not its own exemplar: rows 1 and 2 are, annotations removed
    ex = cfg["prompt_example"]
    assert ex.startswith("Question: " + ROWS[1]["question"]) and "<<" not in ex and "The answer is 12." in ex
    assert ex.endswith("Question: " + ROWS[0]["question"] + "\nAnswer:")


def test_cli_errors_are_clear(tmp_path, capsys):
    rc, _, err = _run(capsys, "embedded:smollm2-135m-instruct", "--data", tmp_path / "missing.jsonl")
    assert rc == 2 and "missing.jsonl: no such file" in err
    unlabeled = _write(tmp_path / "q.jsonl", [{"question": "What is 1 + 1?"}])
    rc, _, err = _run(capsys, "embedded:smollm2-135m-instruct", "--data", unlabeled)
    assert rc == 2 and "no labeled rows" in err
    rc, _, err = _run(capsys, "x", "--data", unlabeled, "--samples", "2", "--k", "4")
    assert rc == 2 and "--k 4" in err
    labeled = _write(tmp_path / "l.jsonl", ROWS)
    (tmp_path / "emptyrun" / "checkpoints").mkdir(parents=True)
    rc, _, err = _run(capsys, tmp_path / "emptyrun", "--data", labeled)
    assert rc == 2 and "without checkpoints" in err
    rc, _, err = _run(capsys, tmp_path, "--data", labeled)
    assert rc == 2 and "neither a Hugging Face model directory" in err
    rc, _, err = _run(capsys, "no-such/model", "--data", labeled, "--user-template", "{q}")
    assert rc == 2 and "{question}" in err
    rc, _, err = _run(capsys, "embedded:smollm2-135m-instruct", "--data", labeled, "--no-greedy")
    assert rc == 2 and "--no-greedy needs --samples" in err
