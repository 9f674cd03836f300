"""SFT warm-up: the target format, the prompt mask of the loss, training, the cache, the CLI."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkd.config import loads_config
from rlkd.data import Example
from rlkd.sft import build_sft_rows, end_of_turn_id, ensure_sft, keep_right_and_finished, main, sft_loss, sft_target

ROOT = Path(__file__).resolve().parents[1]


def test_sft_target_strips_calculator_annotations_and_ends_in_boxed():
    gsm8k = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert sft_target(gsm8k, "18") == "Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\nThe answer is \\boxed{18}."
    assert sft_target("So it is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}") == "So it is \\boxed{\\frac{1}{2}}."
    assert sft_target("No marker here", "7").endswith("The answer is \\boxed{7}.")


def test_end_of_turn_is_the_chat_templates_closing_token(smollm2_path):
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == "<|im_end|>"


def test_sft_loss_counts_response_tokens_only(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    examples = [Example("a", "What is 2 + 3?", "5", "2 + 3 = <<2+3=5>>5\n#### 5"),
                Example("b", "A much longer question about apples and pears and oranges?", "12", "#### 12")]
    rows, skipped = build_sft_rows(tok, examples, system_prompt=None, user_template="{question}", max_len=512)
    assert skipped == 0 and rows[0][1][-1] == end_of_turn_id(tok)
    with torch.no_grad():
        loss, count = sft_loss(model, rows, pad_id=tok.eos_token_id)
    assert count == sum(len(r) for _, r in rows)
    # The same number by hand: cross-entropy of each response token given everything before it.
    manual = 0.0
    for prompt, response in rows:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + response])).logits[0].float(), -1)
        for k, token in enumerate(response):
            manual -= float(logp[len(prompt) + k - 1, token])
    assert float(loss) == pytest.approx(manual, rel=1e-4)
    # Prompt tokens carry no loss: the same response after a different prompt counts the same tokens.
    prompt, response = rows[0]
    assert sft_loss(model, [(rows[1][0], response)], tok.eos_token_id)[1] == len(response)


def _sft_config(model_path: Path, cache: Path, **extra: str):
    sets = {"model.name_or_path": json.dumps(str(model_path)), "model.dtype": '"float32"', "sft.examples": "4",
            "sft.batch_size": "2", "sft.micro_batch_size": "1", "sft.epochs": "4", "sft.lr": "3e-3", "sft.warmup_steps": "0",
            "sft.cache_dir": json.dumps(str(cache)), "sft.enabled": "true", "sft.source": '"gold"', "train.eval_every": "0", **extra}
    return loads_config((ROOT / "configs" / "tiny.toml").read_text(), overrides=[f"{k}={v}" for k, v in sets.items()])


def test_ensure_sft_trains_caches_and_writes_a_loadable_checkpoint(tmp_path, tiny_model_path):
    cfg = _sft_config(tiny_model_path, tmp_path / "sft")
    first = ensure_sft(cfg, progress=False, log=lambda *_: None)
    assert not first.cached and first.info["examples"] == 4 and first.info["steps"] == 8
    losses = first.info["loss"]
    assert losses[-1] < losses[0]  # four passes over four examples: the loss must fall
    model = AutoModelForCausalLM.from_pretrained(first.path, dtype=torch.float32)  # saved as bf16, loads as HF
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    moved = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters())
             if (p - q.bfloat16().float()).abs().max() > 0]
    assert moved, "SFT did not change any weight"
    again = ensure_sft(cfg, progress=False, log=lambda *_: None)
    assert again.cached and again.path == first.path and again.key == first.key
    # A different recipe is a different checkpoint.
    other = ensure_sft(_sft_config(tiny_model_path, tmp_path / "sft", **{"sft.lr": "1e-3"}), progress=False,
                       log=lambda *_: None)
    assert other.key != first.key


def test_rlkd_sft_cli_rejects_a_bad_config_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "c.toml"
    bad.write_text("[sft]\nlr = -1\n")
    assert main([str(bad)]) == 2
    assert "sft.lr" in capsys.readouterr().err


def test_rejection_sampling_keeps_only_finished_answers_the_verifier_calls_right():
    examples = [Example(str(i), f"q{i}", "5", "#### 5") for i in range(4)]
    rows = [{"id": "0", "response": "2 + 3 = 5. \\boxed{5}", "finished": True, "verdict": "Equal"},
            {"id": "1", "response": "2 + 3 = 6. \\boxed{6}", "finished": True, "verdict": "Different"},
            {"id": "2", "response": "2 + 3 = 5, so \\boxed{5}", "finished": False, "verdict": "Equal"},
            {"id": "3", "response": "I think", "finished": True, "verdict": "NoAnswer"}]
    kept = keep_right_and_finished(examples, rows)
    assert [(e.id, e.solution, e.answer) for e in kept] == [("0", "2 + 3 = 5. \\boxed{5}", "5")]


def test_self_source_trains_on_the_students_own_right_answers(tmp_path, tiny_model_path, monkeypatch):
    monkeypatch.setenv("RLKD_CACHE", str(tmp_path / "cache"))
    cfg = _sft_config(tiny_model_path, tmp_path / "sft", **{"sft.source": '"self"', "sft.epochs": "1"})
    # A random tiny student answers nothing right: a clear error, not an empty SFT.
    with pytest.raises(ValueError, match="none of the student's 4 answers"):
        ensure_sft(cfg, progress=False, log=lambda *_: None)
    # Its greedy answers were generated once and cached; mark one right, as a real student's would be.
    (cached,) = (tmp_path / "cache" / "evals").glob("*.json")
    data = json.loads(cached.read_text())
    assert len(data["rows"]) == 4 and all("response" in r for r in data["rows"])
    data["rows"][1].update(verdict="Equal", finished=True)
    cached.write_text(json.dumps(data))
    result = ensure_sft(cfg, progress=False, log=lambda *_: None)
    assert result.info["examples"] == 1 and result.info["recipe"]["source"] == "self"
