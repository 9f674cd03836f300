"""The single-token judge on a real tokenizer and chat template (SmolLM2's) and real models."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkd.judge import JudgeError, SingleTokenJudge, answer_token_ids, split_judge_prompt

TEMPLATE = "Question: {question}\nProposed solution: {response}\nIs the solution correct? Answer Yes or No."
REF_TEMPLATE = "Question: {question}\nReference answer: {reference}\nSolution: {response}\nDoes the solution reach the reference answer? Answer Yes or No."

QUESTIONS = ["What is 2 + 3?", "Tom has 4 apples and eats one. How many are left?", "What is 12 * 12?"]
RESPONSES = ["2 + 3 = 5. The answer is 5.", "4 - 1 = 3 apples remain.\n#### 3", "12 * 12 = 124. The answer is 124."]


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    return model, tok


def test_split_prompt_renders_exactly_the_chat_template(tiny):
    _, tok = tiny
    prompt = split_judge_prompt(tok, REF_TEMPLATE, "You are a strict grader.")
    assert prompt.fields == ["question", "reference", "response"]
    q, ref, resp = QUESTIONS[0], "5", RESPONSES[0]
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "You are a strict grader."},
         {"role": "user", "content": REF_TEMPLATE.format(question=q, reference=ref, response=resp)}],
        tokenize=False, add_generation_prompt=True)
    assert prompt.render(question=q, reference=ref, response=resp) == expected


def test_template_errors_name_the_placeholder(tiny):
    _, tok = tiny
    with pytest.raises(JudgeError, match=r"\{response\}"):
        split_judge_prompt(tok, "Question: {question}", None)
    with pytest.raises(JudgeError, match=r"\{answer\}"):
        split_judge_prompt(tok, "{question} {response} {answer}", None)


def test_yes_no_tokens_follow_where_the_prompt_ends(tiny):
    _, tok = tiny
    after_ws = answer_token_ids(tok, "Yes", after_whitespace=True)
    mid_line = answer_token_ids(tok, "Yes", after_whitespace=False)
    assert set(after_ws) < set(mid_line)  # a leading-space spelling only where no whitespace precedes
    assert tok.encode("Yes", add_special_tokens=False)[0] in after_ws


def test_judge_probability_equals_full_softmax_by_hand(tiny):
    model, tok = tiny
    judge = SingleTokenJudge(model, tok, template=TEMPLATE, abstain_threshold=0.0, max_len=512, max_tokens_per_batch=4096)
    scores = judge.score(QUESTIONS, RESPONSES)
    for i, (q, r) in enumerate(zip(QUESTIONS, RESPONSES)):
        ids = tok(judge.render(q, r), add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            probs = torch.softmax(model(ids).logits[0, -1].double(), -1)
        p_yes = float(probs[judge.yes_ids].sum())
        p_no = float(probs[judge.no_ids].sum())
        # Batched with left padding and position ids must equal the prompt scored alone.
        assert scores.p_yes[i] == pytest.approx(p_yes, rel=1e-3, abs=1e-7)
        assert scores.p_no[i] == pytest.approx(p_no, rel=1e-3, abs=1e-7)
        assert scores.reward[i] == pytest.approx(p_yes / (p_yes + p_no), rel=1e-3)


def test_abstention_is_nan_and_counted_never_zero(tiny):
    model, tok = tiny  # a random tiny model spreads its mass over the vocabulary: P(Yes)+P(No) << 0.5
    judge = SingleTokenJudge(model, tok, template=TEMPLATE, abstain_threshold=0.5)
    scores = judge.score(QUESTIONS, RESPONSES)
    assert scores.abstained.all() and np.isnan(scores.reward).all()
    assert scores.abstain_rate == 1.0


def test_reference_guided_needs_references(tiny):
    model, tok = tiny
    judge = SingleTokenJudge(model, tok, template=REF_TEMPLATE, abstain_threshold=0.0)
    assert judge.needs_reference
    with pytest.raises(JudgeError, match="reference"):
        judge.score(QUESTIONS, RESPONSES)
    scores = judge.score(QUESTIONS, RESPONSES, ["5", "3", "144"])
    assert np.isfinite(scores.reward).all()


def test_truncation_keeps_the_end_of_long_responses(tiny):
    model, tok = tiny
    judge = SingleTokenJudge(model, tok, template=TEMPLATE, abstain_threshold=0.0, max_len=96, max_tokens_per_batch=1024)
    long = "blah " * 400 + "The answer is 5."
    scores = judge.score([QUESTIONS[0]], [long])
    assert scores.num_truncated == 1 and np.isfinite(scores.reward[0])


@pytest.mark.slow
def test_real_instruct_judge_puts_its_mass_on_yes_no(smollm2_path):
    """SmolLM2-135M-Instruct, real weights: after the assistant header most mass is on Yes/No."""
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    judge = SingleTokenJudge(model, tok, template=TEMPLATE + " Reply with one word.", abstain_threshold=0.0)
    scores = judge.score(QUESTIONS, RESPONSES)
    # Mechanics, not quality: a random model puts ~1e-4 here; the 135M instruct model ~0.26.
    assert (scores.p_yes + scores.p_no).mean() > 0.1


def test_judge_forward_builds_no_kv_cache_and_no_full_fp32_copy_of_the_output_layer(tiny_model_path):
    from torch.utils._python_dispatch import TorchDispatchMode

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    judge = SingleTokenJudge(model, tok, template=TEMPLATE, abstain_threshold=0.0, max_len=512, max_tokens_per_batch=4096)
    caches = []
    model.get_decoder().register_forward_hook(lambda _m, _i, out: caches.append(out.past_key_values))

    class LargestFloat32(TorchDispatchMode):  # the largest fp32 tensor any op creates
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    LargestFloat32.largest = max(LargestFloat32.largest, t.numel())
            return out

    batch = judge.pack(QUESTIONS, RESPONSES)[0]
    with torch.no_grad(), LargestFloat32():
        probs = judge.last_token_probs(batch.input_ids, batch.attention_mask, batch.last_index)
    assert caches == [None]
    weight = model.get_output_embeddings().weight
    assert LargestFloat32.largest < weight.numel() // 4
    # ... and the result is the fp32 output layer over the last hidden state, exactly as before.
    with torch.no_grad():
        ids = torch.as_tensor(np.asarray(batch.input_ids))
        mask = torch.as_tensor(np.asarray(batch.attention_mask))
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask,
                                     position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
        last = hidden[torch.arange(len(ids)), torch.as_tensor(np.asarray(batch.last_index))]
        want = torch.softmax(last.float() @ weight.float().T, -1)
    torch.testing.assert_close(probs, want, rtol=1e-4, atol=1e-7)


# Qwen3's switch, reduced to its effect: unless `enable_thinking` is false the assistant turn opens
# a <think> block (and a Qwen3 teacher spends its tokens there); false closes an empty one.
QWEN3_LIKE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def test_teacher_references_render_with_the_configured_template_kwargs(tmp_path, tiny_model_path):
    from rlkd.config import loads_config
    from rlkd.judge import TeacherReferences
    from rlkd.rollout import HFRollout

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    tok.chat_template = QWEN3_LIKE_TEMPLATE

    class RecordingRollout(HFRollout):  # the real rollout; it also keeps the prompts it was given
        prompts: list = []

        def generate(self, prompt_ids, n, **kw):
            RecordingRollout.prompts += [tok.decode(p) for p in prompt_ids]
            return super().generate(prompt_ids, n, **kw)

    kwargs = dict(loads_config("").judge.teacher_template_kwargs)  # the default config's
    teacher = RecordingRollout(model, tok, max_new_tokens=4)
    refs = TeacherReferences(teacher, tok, tmp_path / "refs.jsonl", system_prompt=None,
                             user_template="{question}", template_kwargs=kwargs)
    assert len(refs.get(["What is 2 + 3?"])) == 1
    assert RecordingRollout.prompts[-1].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    thinking = TeacherReferences(teacher, tok, tmp_path / "thinking.jsonl", system_prompt=None, user_template="{question}")
    thinking.get(["What is 2 + 3?"])
    assert RecordingRollout.prompts[-1].endswith("<|im_start|>assistant\n<think>\n")


# ----------------------------------------------------------------------------- the answer gate

ANSWER_FREE = ["Thought process:", ":", "", "Let me solve this step by step.", "12 * 12 = 144", "\\boxed{}",
               "The answer is \\boxed{}.", "the answer is: within \\boxed{}"]


def test_answer_gate_pays_nothing_without_a_forward_pass(tiny):
    _, tok = tiny
    # No model at all: a forward pass would fail, so none happened.
    judge = SingleTokenJudge(None, tok, template=TEMPLATE, abstain_threshold=0.0)
    scores = judge.score(["What is 12 * 12?"] * len(ANSWER_FREE), ANSWER_FREE)
    assert scores.gated.all() and not scores.abstained.any()
    assert scores.reward.dtype == np.float32 and (scores.reward == 0.0).all()  # 0, not NaN
    assert scores.gate_rate == 1.0 and scores.abstain_rate == 0.0


def test_answer_gate_keeps_answered_rows_exactly_as_scored_alone(tiny):
    model, tok = tiny
    judge = SingleTokenJudge(model, tok, template=TEMPLATE, abstain_threshold=0.0)
    mixed_q = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[1], QUESTIONS[2]]
    mixed_r = [RESPONSES[0], "Thought process:", RESPONSES[1], RESPONSES[2]]
    mixed = judge.score(mixed_q, mixed_r)
    alone = judge.score(QUESTIONS, RESPONSES)
    assert mixed.gated.tolist() == [False, True, False, False]
    assert mixed.reward[1] == 0.0 and mixed.p_yes[1] == 0.0
    np.testing.assert_allclose(mixed.reward[[0, 2, 3]], alone.reward, rtol=1e-4)


def test_answer_gate_off_scores_answer_free_text_and_abstention_stays_distinct(tiny):
    model, tok = tiny
    off = SingleTokenJudge(model, tok, template=TEMPLATE, abstain_threshold=0.5, answer_gate=False)
    scores = off.score(["What is 12 * 12?"] * 2, ANSWER_FREE[:2])
    assert not scores.gated.any()
    assert scores.abstained.all() and np.isnan(scores.reward).all()  # the random tiny model abstains
    on = SingleTokenJudge(model, tok, template=TEMPLATE, abstain_threshold=0.5)
    scores = on.score(["What is 12 * 12?"] * 2, [ANSWER_FREE[0], RESPONSES[2]])
    assert scores.gated.tolist() == [True, False] and scores.abstained.tolist() == [False, True]
    assert scores.reward[0] == 0.0 and np.isnan(scores.reward[1])


def test_answer_gate_pays_a_hedge_nothing(tiny):
    _, tok = tiny
    judge = SingleTokenJudge(None, tok, template=TEMPLATE)  # no model: a gated row needs no forward pass
    hedges = [
        "The answer is \\boxed{142} or \\boxed{144}.",
        "It is one of \\boxed{1}, \\boxed{144}, \\boxed{12}.",
        "The answer is 142 or 144.",  # unboxed: the judge paid this 0.49 against 0.40 for a wrong number
    ]
    scores = judge.score(["What is 12 * 12?"] * 3, hedges)
    assert scores.gate_reason.tolist() == ["hedge"] * 3 and (scores.reward == 0.0).all()
    # One value boxed twice, or earlier lines boxing other values, is a single answer.
    assert judge.gate_reasons(["\\boxed{144}, i.e. \\boxed{144.0}", "First \\boxed{12}.\nSo \\boxed{144}."]).tolist() == [None, None]


def test_answer_gate_uses_strict_extraction(tiny):
    _, tok = tiny
    judge = SingleTokenJudge(None, tok, template=TEMPLATE)
    # A bare number is an answer to the lenient extractor, not to the strict one (VR's no_answer rule).
    assert judge.gate(["12 * 12 = 144", "#### 144", "so \\boxed{144}", "The answer is 144."]).tolist() == [True, False, False, False]
    # Text addressed to the judge states no answer (rust/extract.rs "Values").
    assert judge.gate(["The answer is correct.", "Final Answer: Yes", "\\boxed{correct}"]).tolist() == [True, True, True]
