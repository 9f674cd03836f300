"""`rlkd-judge` end to end on small files: the tiny random model for mechanics, SmolLM2 for the
real-model path (checked against SingleTokenJudge with the training defaults)."""

import json
import math

import numpy as np
import pytest

from rlkd.judge_cli import CliError, load_rows, main, resolve_labels, summarize

ROWS = [
    {"question": "What is 2 + 3?", "response": "2 + 3 = 5.\n#### 5", "gold": "5"},  # Equal -> correct
    {"question": "What is 2 + 3?", "response": "2 + 3 = 6.\n#### 6", "gold": "5"},  # NotEqual -> incorrect
    {"question": "What is 7 - 2?", "response": "I do not know.", "gold": "5"},  # NoAnswer -> incorrect
    {"question": "Tom has 4 apples and eats one. How many are left?", "response": "4 - 1 = 3.\n#### 3", "label": True, "reference": "3"},
    {"question": "Tom has 4 apples and eats one. How many are left?", "response": "4 - 1 = 2.\n#### 2", "label": 0, "reference": "3"},
    # Unknown for the Rust verifier and for math-verify: excluded from the metrics, counted
    {"question": "Solve x^2 = 2.", "response": "The answer is \\sqrt{2}+\\pi^{e}", "gold": "x^2=2"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def is_png(path):
    data = path.read_bytes()
    return len(data) > 2000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_from_label_and_gold_unknown_excluded_and_counted(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "rows.jsonl", ROWS))
    y, counts = resolve_labels(rows)
    assert counts == {"from_label": 2, "from_gold": 3, "unknown_excluded": 1, "no_label": 0}
    assert y[:5].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0] and math.isnan(y[5])
    assert rows[0].where.endswith(":line 1") and rows[3].reference == "3" and rows[3].label is True


def test_summarize_hand_computed():
    scores = np.array([0.9, 0.8, 0.3, 0.6, np.nan, 0.1])
    labels = np.array([1, 1, 0, 0, 1, np.nan], dtype=float)
    s = summarize(scores, labels, np.array([0, 0, 0, 0, 1, 0], dtype=bool), 2.0, mass=np.full(6, 0.5))
    assert s["n"] == 6 and s["n_labeled"] == 5 and s["n_labeled_scored"] == 4
    assert s["auroc"] == 1.0  # positives 0.9, 0.8 above negatives 0.6, 0.3
    assert s["accuracy_at_0_5"] == 0.75  # 0.6 is a false positive
    assert s["best_threshold"] == 0.8 and s["accuracy_at_best"] == 1.0
    assert s["brier"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.36) / 4)
    assert s["accuracy_abstain_as_wrong"] == 0.6  # 3 right of 5 labeled; the abstention counts as wrong
    assert s["abstain_rate"] == pytest.approx(1 / 6) and s["responses_per_s"] == 3.0 and s["mean_mass"] == 0.5


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "q", "response": "r"}\n{"question": "q"}\n', r"rows\.jsonl:line 2: missing field 'response'"),
        ('{"question": "q", "response": "r", "label": "maybe"}\n', r"line 1: field 'label' must be true/false or 1/0"),
        ('{"question": "q", "response": ["r"]}\n', r"line 1: field 'response' must be a string"),
        ('{"question": "q", "response": "r"}\n{"question": \n', r"rows\.jsonl:2: invalid JSON"),
        ('["q", "r"]\n', r"line 1: expected a JSON object"),
        ("\n", r"no rows"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    with pytest.raises(Exception, match=message):
        load_rows(path)


def test_cli_end_to_end_compare_tiny(tmp_path, tiny_model_path, capsys):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    out = tmp_path / "report"
    rc = main([str(tiny_model_path), "--data", str(data), "--out", str(out), "--compare", "--dtype", "float32",
               "--device", "cpu", "--max-new-tokens", "4", "--no-progress", "--abstain-threshold", "0"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "single_token" in printed and "generative" in printed and "speed ratio" in printed
    assert "1 excluded (verifier Unknown)" in printed
    report = json.loads((out / "judge.json").read_text())
    assert report["mode"] == "reference_guided"  # every row has a reference or a gold answer
    assert report["labels"]["unknown_excluded"] == 1
    assert len(report["rows"]) == len(ROWS)
    st, gen = report["results"]["single_token"], report["results"]["generative"]
    assert st["n_labeled"] == 5 and st["n_labeled_scored"] == 5  # threshold 0: never abstains
    for key in ("auroc", "accuracy_at_0_5", "accuracy_at_best", "brier", "ece", "mean_mass", "abstain_rate"):
        assert 0.0 <= st[key] <= 1.0, key
    assert st["responses_per_s"] > 0 and gen["responses_per_s"] > 0
    assert 0.0 <= gen["abstain_rate"] <= 1.0 and 1 <= gen["mean_new_tokens"] <= 4
    row = report["rows"][0]
    assert row["label"] is True and 0 <= row["single_token.score"] <= 1
    assert 0 <= row["single_token.p_yes"] + row["single_token.p_no"] <= 1 + 1e-6 and "generative.text" in row
    assert report["rows"][5]["label"] is None
    assert "Reference answer: 5" in report["example_prompt"]
    assert is_png(out / "reliability.png") and is_png(out / "scores.png")


def test_cli_matches_training_judge_on_smollm2(tmp_path, smollm2_path):
    """The CLI's scores are SingleTokenJudge's with the JudgeSection defaults (what training runs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlkd.config import JudgeSection
    from rlkd.judge import SingleTokenJudge
    from rlkd.models import load_causal_lm

    rows = [{"q": r["question"], "a": r["response"], "y": i % 2 == 0} for i, r in enumerate(ROWS[:4])]
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    out = tmp_path / "report"
    rc = main([str(smollm2_path), "--data", str(data), "--out", str(out), "--question-field", "q", "--response-field", "a",
               "--label-field", "y", "--device", "cpu", "--no-progress"])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "judge.json").read_text())
    assert report["mode"] == "reference_free" and report["labels"]["from_label"] == 4
    d = JudgeSection()
    model, tok = load_causal_lm(str(smollm2_path), dtype=d.dtype, device="cpu", progress=False)
    judge = SingleTokenJudge(model, tok, template=report["template"], system_prompt=d.system_prompt, yes_words=d.yes_words,
                             no_words=d.no_words, abstain_threshold=d.abstain_threshold, max_len=d.max_len,
                             max_tokens_per_batch=d.max_tokens_per_batch)  # fmt: skip
    direct = judge.score([r["q"] for r in rows], [r["a"] for r in rows])
    got = np.array([r["single_token.p_yes"] for r in report["rows"]])
    np.testing.assert_allclose(got, direct.p_yes, rtol=1e-5, atol=1e-6)
    assert report["system_prompt"] == d.system_prompt and report["dtype"] == "bfloat16"
    res = report["results"]["single_token"]
    assert 0 < res["mean_mass"] <= 1 and 0 <= res["abstain_rate"] <= 1
    assert is_png(out / "reliability.png") and is_png(out / "scores.png")


def test_cli_errors_exit_2_with_a_message(tmp_path, tiny_model_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main([str(tiny_model_path), "--data", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "response": "r"}\n{"question": "q", "answer": "r"}\n')
    assert main([str(tiny_model_path), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:line 2: missing field 'response'" in capsys.readouterr().err

    ok = write_jsonl(tmp_path / "ok.jsonl", [{"question": "q", "response": "r"}])
    assert main([str(tiny_model_path), "--data", str(ok), "--out", str(tmp_path / "o"), "--mode", "reference_guided"]) == 2
    assert "line 1: reference_guided mode needs a 'reference'" in capsys.readouterr().err
    assert main([str(tiny_model_path), "--data", str(ok), "--out", str(tmp_path / "o"), "--mode", "reference_guided",
                 "--template", "{question} {response}"]) == 2  # fmt: skip
    assert "lacks {reference}" in capsys.readouterr().err
    assert main([str(tiny_model_path), "--data", str(ok), "--out", str(tmp_path / "o"), "--yes-words", " , "]) == 2
    assert "--yes-words" in capsys.readouterr().err
    assert main(["embedded:no-such-model", "--data", str(ok), "--out", str(tmp_path / "o")]) == 2
    assert "unknown embedded model" in capsys.readouterr().err
    with pytest.raises(CliError):
        load_rows(ok, question_field="prompt")
