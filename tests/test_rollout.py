"""HF rollouts on the tiny random model (real SmolLM2 tokenizer and chat template)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlkd.models import load_causal_lm
from rlkd.rollout import HFRollout, Rollouts, render_prompts

QUESTIONS = [
    "What is 2 + 2?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Compute 7 * 6.",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_path: Path):  # type: ignore[no-untyped-def]
    return load_causal_lm(str(tiny_model_path), dtype="float32")


@pytest.fixture(scope="module")
def prompts(tiny) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return render_prompts(tiny[1], QUESTIONS, system_prompt="You are a careful solver.")


def _recompute(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].float() / temperature
    lp = torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : -1]
    return lp.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_render_prompts(tiny) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny
    ids = render_prompts(tok, ["Is \\boxed{x} kept?"], system_prompt="SYS", user_template="Q: {question} A:")
    text = tok.decode(ids[0])
    assert text.startswith("<|im_start|>system\nSYS<|im_end|>")
    assert "Q: Is \\boxed{x} kept? A:" in text
    assert text.endswith("<|im_start|>assistant\n")
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q: Is \\boxed{x} kept? A:"}],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    assert text == expected
    with pytest.raises(ValueError, match="question"):
        render_prompts(tok, ["x"], system_prompt=None, user_template="no placeholder")


def test_shapes_order_and_finished(tiny, prompts) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    torch.manual_seed(0)
    ro = HFRollout(model, tok, max_new_tokens=5, temperature=1.0, top_p=1.0, batch_size=4).generate(prompts, n=3)
    assert isinstance(ro, Rollouts) and len(ro) == 9 and ro.n == 3 and ro.num_prompts == 3
    eos = set(ro_eos(model, tok))
    for k in range(len(ro)):
        assert ro.prompt_ids[k] == prompts[k // 3]
        assert 1 <= len(ro.response_ids[k]) <= 5
        assert len(ro.logprobs[k]) == len(ro.response_ids[k])
        assert all(lp <= 0.0 for lp in ro.logprobs[k])
        if ro.finished[k]:
            assert ro.response_ids[k][-1] in eos
            assert not eos & set(ro.response_ids[k][:-1])
        else:
            assert len(ro.response_ids[k]) == 5 and not eos & set(ro.response_ids[k])
        assert ro.response_text[k] == tok.decode(ro.response_ids[k], skip_special_tokens=True)
    assert not model.training


def ro_eos(model, tok) -> list[int]:  # type: ignore[no-untyped-def]
    from rlkd.rollout import eos_token_ids

    return eos_token_ids(model, tok)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_a_recomputed_forward_pass(tiny, prompts, temperature: float) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    torch.manual_seed(1)
    ro = HFRollout(model, tok, max_new_tokens=6, temperature=temperature, top_p=1.0, batch_size=3).generate(
        prompts, n=2
    )
    for k in range(len(ro)):
        want = _recompute(model, ro.prompt_ids[k], ro.response_ids[k], temperature)
        torch.testing.assert_close(torch.tensor(ro.logprobs[k]), want, atol=1e-4, rtol=1e-4)


def test_left_padding_same_result_alone_or_batched(tiny, prompts) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    roll = HFRollout(model, tok, max_new_tokens=8, temperature=1.0, top_p=1.0, batch_size=None)
    together = roll.generate(prompts, n=1, greedy=True)
    for i, p in enumerate(prompts):
        alone = roll.generate([p], n=1, greedy=True)
        assert alone.response_ids[0] == together.response_ids[i]
        torch.testing.assert_close(
            torch.tensor(alone.logprobs[0]), torch.tensor(together.logprobs[i]), atol=1e-4, rtol=1e-4
        )
    # greedy log-probs are the T=1 distribution's, and greedy picks its argmax
    for k in range(len(together)):
        want = _recompute(model, together.prompt_ids[k], together.response_ids[k], 1.0)
        torch.testing.assert_close(torch.tensor(together.logprobs[k]), want, atol=1e-4, rtol=1e-4)


def test_deterministic_given_seed(tiny, prompts) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    roll = HFRollout(model, tok, max_new_tokens=6, temperature=1.0, top_p=0.9, batch_size=2)
    torch.manual_seed(123)
    a = roll.generate(prompts, n=2)
    torch.manual_seed(123)
    b = roll.generate(prompts, n=2)
    assert a.response_ids == b.response_ids and a.logprobs == b.logprobs
    torch.manual_seed(124)
    c = roll.generate(prompts, n=2)
    assert c.response_ids != a.response_ids


def test_tiny_top_p_is_greedy(tiny, prompts) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    greedy = HFRollout(model, tok, max_new_tokens=6).generate(prompts, n=1, greedy=True)
    torch.manual_seed(5)
    nucleus = HFRollout(model, tok, max_new_tokens=6, temperature=1.0, top_p=1e-6).generate(prompts, n=2)
    for k in range(len(nucleus)):
        assert nucleus.response_ids[k] == greedy.response_ids[k // 2]
        # reported log-probs are the untruncated temperature-scaled ones, not log(1) = 0
        torch.testing.assert_close(
            torch.tensor(nucleus.logprobs[k]), torch.tensor(greedy.logprobs[k // 2]), atol=1e-4, rtol=1e-4
        )


def test_finished_flags_with_a_model_that_likes_eos(tiny, prompts) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    eos = tok.eos_token_id

    def likes_eos(module, inputs, output):  # type: ignore[no-untyped-def]
        out = torch.zeros_like(output)  # uniform over the vocabulary ...
        out[..., eos] = 9.0  # ... except EOS, with probability ~0.14 per step
        return out

    handle = model.lm_head.register_forward_hook(likes_eos)
    try:
        torch.manual_seed(0)
        ro = HFRollout(model, tok, max_new_tokens=6, batch_size=5).generate(prompts, n=4)
    finally:
        handle.remove()
    assert any(ro.finished) and not all(ro.finished)
    for k in range(len(ro)):
        if ro.finished[k]:
            assert ro.response_ids[k][-1] == eos and eos not in ro.response_ids[k][:-1]
            assert "<|im_end|>" not in ro.response_text[k]
            assert ro.logprobs[k][-1] == pytest.approx(9.0 - torch.logsumexp(
                torch.tensor([9.0] + [0.0] * (model.config.vocab_size - 1)), 0).item(), abs=1e-4)
        else:
            assert len(ro.response_ids[k]) == 6


def test_argument_errors(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny
    for kwargs in ({"max_new_tokens": 0}, {"max_new_tokens": 4, "temperature": 0.0},
                   {"max_new_tokens": 4, "top_p": 0.0}, {"max_new_tokens": 4, "batch_size": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            HFRollout(model, tok, **kwargs)
    roll = HFRollout(model, tok, max_new_tokens=2)
    with pytest.raises(ValueError):
        roll.generate([[1, 2]], n=0)
    with pytest.raises(ValueError):
        roll.generate([[]], n=1)
    with pytest.raises(ValueError, match="multiple of n"):
        Rollouts([[1]], [[2]], ["x"], [[-1.0]], [True], n=2)
