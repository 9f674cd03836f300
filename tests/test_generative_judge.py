"""The generative judge: verdict parsing, prompt construction, and the mechanics on SmolLM2."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkd.config import JudgeSection
from rlkd.generative_judge import GENERATIVE_SUFFIX, GenerativeJudge, generative_template, parse_verdict
from rlkd.judge import JudgeError

QUESTIONS = ["What is 2 + 3?", "Tom has 4 apples and eats one. How many are left?", "What is 12 * 12?"]
RESPONSES = ["2 + 3 = 5.\n#### 5", "4 - 1 = 3 apples remain.\n#### 3", "12 * 12 = 124.\n#### 124"]
REFERENCES = ["5", "3", "144"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", True),
        ("No.", False),
        ("no, the final answer is 124 but the reference is 144", False),
        ("**YES** - it matches", True),
        ("The answer matches, so yes.", True),
        ("Not quite: the answer is wrong", None),  # "Not" is not "No"
        ("Nope", None),
        ("Yesterday I cannot tell", None),  # whole words only
        ("I cannot tell. No.", False),  # "cannot" holds "no" but not as a word
        ("yes and no", True),  # the first one wins
        ("", None),
        ("The student's final answer is 5.", None),
    ],
)
def test_parse_verdict_first_whole_yes_no_word(text, expected):
    assert parse_verdict(text) is expected


def test_parse_verdict_custom_words():
    assert parse_verdict("Incorrect.", ("Correct",), ("Incorrect",)) is False
    assert parse_verdict("correct!", ("Correct",), ("Incorrect",)) is True
    with pytest.raises(JudgeError):
        parse_verdict("yes", ("",), ("No",))


def test_generative_template_keeps_fields_and_asks_for_a_verdict():
    t = generative_template(JudgeSection().template)
    assert t.endswith(GENERATIVE_SUFFIX)
    for field in ("{question}", "{reference}", "{response}"):
        assert t.count(field) == 1


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    return model, tok


def _judge(model, tok, **kw):
    d = JudgeSection()
    args = dict(template=generative_template(d.template), system_prompt=d.system_prompt, max_len=d.max_len,
                max_tokens_per_batch=2048, max_new_tokens=8, batch_size=2)  # fmt: skip
    args.update(kw)
    return GenerativeJudge(model, tok, **args)


def test_prompt_ids_match_tokenizing_the_rendered_prompt(smollm2):
    model, tok = smollm2
    judge = _judge(model, tok)
    ids, truncated = judge.prompt_ids(QUESTIONS, RESPONSES, REFERENCES)
    assert truncated == 0
    for i in range(len(QUESTIONS)):
        text = judge.render(QUESTIONS[i], RESPONSES[i], REFERENCES[i])
        assert text.rstrip().endswith("assistant")  # ends with the generation prompt
        assert "one short sentence of reason" in text
        assert ids[i] == tok(text, add_special_tokens=False).input_ids


def test_overlong_responses_are_truncated_from_the_start(smollm2):
    model, tok = smollm2
    judge = _judge(model, tok, max_len=120)
    long = "step " * 400 + "\n#### 5"
    ids, truncated = judge.prompt_ids([QUESTIONS[0]], [long], ["5"])
    assert truncated == 1 and len(ids[0]) == 120
    tail = tok.decode(ids[0])
    assert "#### 5" in tail and tail.rstrip().endswith("assistant")


def test_score_is_greedy_generation_parsed(smollm2):
    model, tok = smollm2
    judge = _judge(model, tok, max_new_tokens=6)
    out = judge.score(QUESTIONS[:2], RESPONSES[:2], REFERENCES[:2])
    assert len(out.text) == 2 and out.reward.dtype == np.float32
    assert np.all((out.new_tokens >= 1) & (out.new_tokens <= 6))
    for text, r, a in zip(out.text, out.reward, out.abstained):
        p = parse_verdict(text)
        assert a == (p is None)
        assert (np.isnan(r) if p is None else r == float(p))
    assert out.abstain_rate == pytest.approx(out.abstained.mean())
    # the verdict of row 1 is exactly what greedy `generate` writes for its prompt
    ids, _ = judge.prompt_ids(QUESTIONS[:2], RESPONSES[:2], REFERENCES[:2])
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids[1]]), max_new_tokens=6, do_sample=False, top_k=None, top_p=None,
                             temperature=None, repetition_penalty=1.0, pad_token_id=tok.pad_token_id or tok.eos_token_id)  # fmt: skip
    assert tok.decode(gen[0, len(ids[1]):], skip_special_tokens=True) == out.text[1]


def test_argument_errors(smollm2):
    model, tok = smollm2
    with pytest.raises(JudgeError, match="max_new_tokens"):
        _judge(model, tok, max_new_tokens=0)
    with pytest.raises(JudgeError, match="batch_size"):
        _judge(model, tok, batch_size=0)
    judge = _judge(model, tok)
    with pytest.raises(JudgeError, match="questions"):
        judge.score(QUESTIONS[:2], RESPONSES, REFERENCES)
    with pytest.raises(JudgeError, match="reference"):
        judge.score(QUESTIONS, RESPONSES, None)


def test_answer_gate_gives_zero_without_decoding(smollm2):
    model, tok = smollm2
    judge = _judge(model, tok, max_new_tokens=4)
    out = judge.score(QUESTIONS[:2], ["Thought process:", RESPONSES[1]], REFERENCES[:2])
    assert out.gated.tolist() == [True, False]
    assert out.reward[0] == 0.0 and not out.abstained[0] and out.text[0] == "" and out.new_tokens[0] == 0
    assert out.new_tokens[1] >= 1
