"""Losses and update pieces of rlkd.algorithms against hand-computed numbers and tiny real models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import rlkd._core
from rlkd.algorithms import (
    PolicyBatch,
    ValueHead,
    build_optimizer,
    build_scheduler,
    flat_to_response,
    kl_penalty,
    make_policy_batch,
    masked_aggregate,
    masked_whiten,
    policy_loss,
    ppo_advantages,
    response_to_flat,
    sequence_rewards_to_token_rewards,
    token_logprobs,
    update_policy,
    value_loss,
)

torch.set_num_threads(1)


def tiny_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, **overrides,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(cfg)


def fixed_batch(**kw) -> PolicyBatch:
    return make_policy_batch([[1, 2, 3], [4, 5], [6]], [[7, 8], [9, 10, 11, 12], [13, 14, 15]], 0, **kw)


# ---------------------------------------------------------------------------- policy loss


def _loss_example():
    # ratios r = exp(logp - old) with old = 0; eps = 0.2. Row 1 col 2 is padding (mask 0) with an
    # absurd log-prob that must not leak into anything.
    r = torch.tensor([[1.5, 0.5, 1.1], [0.9, 1.5, 1.0]])
    logp = torch.log(r)
    logp[1, 2] = float("inf")
    old = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, -1.0, 2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return logp, old, adv, mask


def test_policy_loss_hand_computed_token_and_seq_mean():
    logp, old, adv, mask = _loss_example()
    # per token max(-A r, -A clip(r, 0.8, 1.2)):
    #  (1.5, A=+1) -> max(-1.5, -1.2) = -1.2  clipped (upper side)
    #  (0.5, A=-1) -> max( 0.5,  0.8) =  0.8  clipped (lower side)
    #  (1.1, A=+2) -> -2.2                    inside the trust region
    #  (0.9, A=-2) ->  1.8                    inside
    #  (1.5, A=-1) -> max( 1.5,  1.2) =  1.5  not clipped (pessimistic side keeps the gradient)
    # token_mean = (-1.2 + 0.8 - 2.2 + 1.8 + 1.5) / 5 = 0.7 / 5
    # seq_mean   = ((-2.6 / 3) + (3.3 / 2)) / 2
    lp = logp.clone().requires_grad_(True)
    loss, stats = policy_loss(lp, old, adv, mask, clip_eps=0.2, aggregation="token_mean")
    assert loss.item() == pytest.approx(0.14, abs=1e-6)
    seq, _ = policy_loss(logp, old, adv, mask, clip_eps=0.2, aggregation="seq_mean")
    assert seq.item() == pytest.approx((-2.6 / 3 + 3.3 / 2) / 2, abs=1e-6)
    assert seq.item() != pytest.approx(loss.item(), abs=1e-3)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    rs = [1.5, 0.5, 1.1, 0.9, 1.5]
    assert stats["approx_kl"] == pytest.approx(sum((x - 1) - math.log(x) for x in rs) / 5, abs=1e-6)
    assert stats["ratio_mean"] == pytest.approx(1.1, abs=1e-6)
    assert stats["ratio_max"] == pytest.approx(1.5, abs=1e-6)
    # d loss / d logp = -A r / 5 where not clipped, 0 where clipped or masked
    loss.backward()
    want = torch.tensor([[0.0, 0.0, -2.0 * 1.1 / 5], [2.0 * 0.9 / 5, 1.0 * 1.5 / 5, 0.0]])
    torch.testing.assert_close(lp.grad, want, atol=1e-6, rtol=1e-5)


def test_aggregation_denominator_and_errors():
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_aggregate(x, m, "token_mean").item() == pytest.approx(2.0)
    assert masked_aggregate(x, m, "seq_mean").item() == pytest.approx((1.5 + 3.0) / 2)
    assert masked_aggregate(x, m, "token_mean", denominator=6).item() == pytest.approx(1.0)
    assert masked_aggregate(x, torch.zeros_like(m), "seq_mean").item() == 0.0
    with pytest.raises(ValueError, match="aggregation"):
        masked_aggregate(x, m, "sum")


# ---------------------------------------------------------------------------- KL, value loss


def test_kl_estimators_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, float("-inf")]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # d = logp - ref = 0.5, -1.0
    torch.testing.assert_close(kl_penalty(logp, ref, mask, estimator="k1"), torch.tensor([[0.5, -1.0, 0.0]]))
    torch.testing.assert_close(kl_penalty(logp, ref, mask, estimator="k2"), torch.tensor([[0.125, 0.5, 0.0]]))
    k3 = kl_penalty(logp, ref, mask, estimator="k3")
    want = torch.tensor([[math.exp(-0.5) + 0.5 - 1.0, math.exp(1.0) - 1.0 - 1.0, 0.0]])
    torch.testing.assert_close(k3, want)  # 0.10653066, 0.71828183
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(logp, ref, mask, estimator="k4")


def test_k3_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(8, 50, generator=g) * 3
    ref = torch.randn(8, 50, generator=g) * 3
    mask = torch.ones(8, 50)
    assert (kl_penalty(logp, ref, mask, estimator="k3") >= 0).all()
    assert kl_penalty(logp, logp, mask, estimator="k3").abs().max().item() == 0.0
    big = kl_penalty(torch.tensor([[0.0]]), torch.tensor([[-500.0]]), torch.ones(1, 1))
    assert torch.isfinite(big).all()


def test_value_loss_hand_computed():
    values = torch.tensor([[1.0, 0.0, 2.0, 7.0]])
    old = torch.tensor([[0.5, 0.5, 1.0, 0.0]])
    returns = torch.tensor([[0.0, 1.0, 2.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # v_clip = 0.7, 0.3, 1.2; max sq errors: max(1, .49)=1, max(1, .49)=1, max(.25, 1.69)=1.69
    loss = value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (1 + 1 + 1.69) / 3, abs=1e-6)


def test_value_clip_zero_turns_clipping_off_instead_of_freezing_the_value_head():
    values = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    old = values.detach().clone()  # right after sampling the values equal the old ones
    returns = torch.tensor([[0.0, 1.0, 2.5]])
    mask = torch.ones(1, 3)
    loss = value_loss(values, old, returns, mask, clip=0.0)
    assert loss.item() == pytest.approx(0.5 * (1 + 1 + 0.25) / 3, abs=1e-6)  # the plain squared error
    loss.backward()
    torch.testing.assert_close(values.grad, (values - returns).detach() / 3)  # gradient (v - R) / n, not 0
    with pytest.raises(ValueError, match="clip"):
        value_loss(values, old, returns, mask, clip=-0.1)


def _exact_kl_gradients(estimator: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Over a 6-outcome categorical policy: the expected gradient of the estimator used as a
    loss (E_{x~π}[∇ k(x)], computed exactly by weighting every outcome with π(x), no gradient
    through the sampling), and the exact gradients of KL(π‖ref) and KL(ref‖π)."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, generator=g, requires_grad=True)
    ref = torch.log_softmax(torch.randn(6, generator=g), -1)
    logp = torch.log_softmax(theta, -1)
    weights = logp.exp().detach()
    k = kl_penalty(logp[None], ref[None], torch.ones(1, 6), estimator=estimator)[0]
    (expected,) = torch.autograd.grad((weights * k).sum(), theta)
    logp = torch.log_softmax(theta, -1)
    (forward,) = torch.autograd.grad((logp.exp() * (logp - ref)).sum(), theta)
    logp = torch.log_softmax(theta, -1)
    (reverse,) = torch.autograd.grad((ref.exp() * (ref - logp)).sum(), theta)
    return expected, forward, reverse


def test_kl_loss_gradients_k1_none_k2_forward_kl_k3_reverse_kl():
    k1, forward, reverse = _exact_kl_gradients("k1")
    assert k1.abs().max() < 1e-6 < forward.abs().max()  # k1 as a loss: no KL pull at all
    torch.testing.assert_close(_exact_kl_gradients("k2")[0], forward)
    torch.testing.assert_close(_exact_kl_gradients("k3")[0], reverse)


def test_update_policy_refuses_k1_as_a_loss_term():
    model = tiny_model()
    opt = build_optimizer(model, lr=1e-3)
    with pytest.raises(ValueError, match="k1"):
        update_policy(model, opt, [fixed_batch(seq_advantages=[1.0, -1.0, 0.5])], kl_coef=0.1, kl_estimator="k1",
                      ref_model=copy.deepcopy(model))


def test_value_head_alignment_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    head = ValueHead(32)
    assert head.linear.weight.abs().max().item() < 0.1
    hidden = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    raw = head(hidden)
    assert raw.dtype == torch.float32 and raw.shape == (2, 5)
    tv = head.token_values(hidden)
    assert (tv[:, 0] == 0).all() and torch.equal(tv[:, 1:], raw[:, :-1])
    head.save(tmp_path / "vh.safetensors")
    other = ValueHead.from_file(tmp_path / "vh.safetensors")
    assert torch.equal(other(hidden), raw)
    with pytest.raises(ValueError, match="hidden_size"):
        ValueHead(16).load(tmp_path / "vh.safetensors")


# ---------------------------------------------------------------------------- batches


def test_make_policy_batch_alignment():
    b = make_policy_batch(
        [[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], 0,
        old_logprobs=[[-0.1, -0.2], [-0.3, -0.4, -0.5]], seq_advantages=[1.5, -2.0],
    )  # fmt: skip
    assert b.input_ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert b.response_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    torch.testing.assert_close(b.old_logprobs, torch.tensor([[0, 0, 0, -0.1, -0.2], [0, -0.3, -0.4, -0.5, 0]]))
    assert b.advantages.tolist() == [[0, 0, 0, 1.5, 1.5], [0, -2.0, -2.0, -2.0, 0]]
    assert b.returns is None and b.response_lengths == [2, 3] and b.num_response_tokens == 5
    tok = make_policy_batch([[5], [8]], [[9, 10], []], 0, token_advantages=[[1.0, 2.0], []])
    assert tok.advantages.tolist() == [[0, 1.0, 2.0], [0, 0, 0]]
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        make_policy_batch([[]], [[1]], 0)
    with pytest.raises(ValueError, match=r"old_logprobs\[1\]"):
        make_policy_batch([[1], [2]], [[3], [4, 5]], 0, old_logprobs=[[0.0], [0.0]])
    with pytest.raises(ValueError, match="not both"):
        make_policy_batch([[1]], [[3]], 0, token_advantages=[[1.0]], seq_advantages=[1.0])


def test_split_trims_and_flat_roundtrip():
    b = fixed_batch(seq_advantages=[1.0, 2.0, 3.0])
    parts = b.split(2)
    assert [len(p) for p in parts] == [2, 1]
    assert parts[0].input_ids.shape == (2, 6) and parts[1].input_ids.shape == (1, 4)
    flat = response_to_flat(b.advantages, b.response_mask)
    assert flat.dtype == np.float32 and flat.tolist() == [1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert torch.equal(flat_to_response(flat, b.response_mask), b.advantages)
    b2 = b.with_advantages(np.arange(9, dtype=np.float32))
    assert response_to_flat(b2.advantages, b.response_mask).tolist() == list(range(9))
    with pytest.raises(ValueError, match="per-token"):
        b.with_advantages([1.0, 2.0])


def test_sequence_rewards_to_token_rewards():
    rewards, lengths = sequence_rewards_to_token_rewards(
        [1.0, 0.5, 2.0], [2, 0, 3], kl=np.array([0.1, 0.2, 0.3, 0.4, 0.5], np.float32), kl_coef=0.5
    )
    # -0.5 * kl everywhere, the score on each sequence's last token; the empty response gets nothing
    np.testing.assert_allclose(rewards, [-0.05, 0.9, -0.15, -0.2, 1.75], rtol=1e-6)
    assert rewards.dtype == np.float32 and lengths.dtype == np.int64 and lengths.tolist() == [2, 0, 3]
    plain, _ = sequence_rewards_to_token_rewards([1.0, 0.5], [1, 2], kl=[[9.0], [9.0, 9.0]])  # coef 0
    assert plain.tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="tokens"):
        sequence_rewards_to_token_rewards([1.0], [2], kl=[0.1], kl_coef=1.0)


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    w = masked_whiten(x, m)
    vals = w[m.bool()]
    assert vals.mean().abs().item() < 1e-6 and vals.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert w[0, 2].item() == 0.0


@pytest.mark.skipif(not hasattr(rlkd._core, "gae"), reason="rlkd._core.gae not merged yet")
def test_ppo_advantages_matches_reference_gae():
    b = make_policy_batch([[1, 2], [3]], [[4, 5, 6], [7, 8]], 0, old_logprobs=[[-1.0, -2.0, -0.5], [-0.2, -0.3]])
    ref = b.old_logprobs - 0.1 * b.response_mask  # k1 = 0.1 per response token
    values = flat_to_response(np.array([0.2, 0.4, 0.6, 0.1, 0.3], np.float32), b.response_mask)
    out, _ = ppo_advantages(b, [1.0, -1.0], values, ref_logprobs=ref, kl_coef=0.5, gamma=1.0, lam=0.95, whiten=False)
    r = [[-0.05, -0.05, 0.95], [-0.05, -1.05]]
    v = [[0.2, 0.4, 0.6], [0.1, 0.3]]
    want = []
    for rs, vs in zip(r, v):
        adv, last = [0.0] * len(rs), 0.0
        for t in reversed(range(len(rs))):
            nv = vs[t + 1] if t + 1 < len(rs) else 0.0
            last = rs[t] + nv - vs[t] + 0.95 * last
            adv[t] = last
        want += adv
    np.testing.assert_allclose(response_to_flat(out.advantages, b.response_mask), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(response_to_flat(out.returns, b.response_mask), np.array(want) + np.concatenate(v), rtol=1e-5, atol=1e-6)
    assert torch.equal(out.old_values, values)


# ---------------------------------------------------------------------------- log-probs


def test_token_logprobs_matches_manual_log_softmax_and_prefix_runs():
    model = tiny_model()
    b = fixed_batch()
    lp, ent, hidden = token_logprobs(model, b.input_ids, b.attention_mask, return_entropy=True, return_hidden=True)
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    full = torch.log_softmax(logits.float(), dim=-1)
    manual = full[:, :-1].gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp[:, 1:], manual, atol=1e-6, rtol=1e-5)
    assert (lp[:, 0] == 0).all()
    ent_manual = -(full.exp() * full).sum(-1)[:, :-1]
    torch.testing.assert_close(ent[:, 1:], ent_manual, atol=1e-5, rtol=1e-5)
    assert hidden.shape == (3, b.input_ids.shape[1], 32)
    # alignment: each response token's log-prob equals a run on its prefix alone
    for row in range(3):
        for t in torch.nonzero(b.response_mask[row]).flatten().tolist():
            prefix = b.input_ids[row : row + 1, :t]
            alone = torch.log_softmax(model(input_ids=prefix).logits[0, -1].float(), -1)[b.input_ids[row, t]]
            assert lp[row, t].item() == pytest.approx(alone.item(), abs=1e-5)
    # temperature divides the logits
    lp2, _, _ = token_logprobs(model, b.input_ids, b.attention_mask, temperature=2.0)
    manual2 = torch.log_softmax(logits.float() / 2.0, -1)[:, :-1].gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp2[:, 1:], manual2, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprob_gradient_matches_naive(dtype, temperature, monkeypatch):
    import rlkd.algorithms as alg

    monkeypatch.setattr(alg, "_CHUNK_ELEMENTS", 3 * 64)  # force several chunks
    g = torch.Generator().manual_seed(1)
    base = (torch.randn(10, 64, generator=g) * 3).to(dtype)
    targets = torch.randint(0, 64, (10,), generator=g)
    w = torch.randn(10, generator=g)
    a = base.clone().requires_grad_(True)
    out = alg._GatherLogProb.apply(a, targets, temperature)
    (out * w).sum().backward()
    b = base.clone().requires_grad_(True)
    naive = torch.log_softmax(b.float() / temperature, -1).gather(-1, targets[:, None]).squeeze(-1)
    (naive * w).sum().backward()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, naive, atol=1e-5, rtol=1e-5)
    assert a.grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(a.grad.float(), b.grad.float(), atol=tol, rtol=tol)


def test_token_logprobs_bf16_model_runs_softmax_in_fp32():
    model = tiny_model().to(torch.bfloat16)
    b = fixed_batch()
    lp, _, _ = token_logprobs(model, b.input_ids, b.attention_mask)
    assert lp.dtype == torch.float32
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    assert logits.dtype == torch.bfloat16
    manual = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp[:, 1:], manual, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------- optimizer, schedule


def test_scheduler_values():
    def lrs(schedule, **kw):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_scheduler(opt, schedule=schedule, warmup_steps=2, total_steps=10, **kw)
        out = []
        for _ in range(13):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    lin = lrs("linear")
    assert lin[0] == pytest.approx(0.5) and lin[1] == pytest.approx(1.0) and lin[2] == pytest.approx(1.0)
    assert lin[6] == pytest.approx(0.5) and lin[10] == pytest.approx(0.0) and lin[12] == pytest.approx(0.0)
    cos = lrs("cosine")
    assert cos[4] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4))) and cos[6] == pytest.approx(0.5)
    assert cos[10] == pytest.approx(0.0, abs=1e-12)
    const = lrs("constant")
    assert const[0] == pytest.approx(0.5) and const[2:] == pytest.approx([1.0] * 11)
    assert lrs("linear", min_lr_ratio=0.1)[6] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="schedule"):
        lrs("step")


def test_build_optimizer_no_decay_on_biases_and_norms():
    model = tiny_model()
    head = ValueHead(32)
    opt = build_optimizer([model, head], lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-6)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    names_no_decay = {id(p) for p in no_decay["params"]}
    assert id(model.model.norm.weight) in names_no_decay and id(head.linear.bias) in names_no_decay
    n_params = sum(1 for _ in model.parameters()) + 2
    assert len(decay["params"]) + len(no_decay["params"]) == n_params
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-6


# ---------------------------------------------------------------------------- update_policy


def _batch_with_old_logprobs(model, seq_adv) -> PolicyBatch:
    b = fixed_batch(seq_advantages=seq_adv)
    with torch.no_grad():
        lp, _, _ = token_logprobs(model, b.input_ids, b.attention_mask)
    return b.replace(old_logprobs=lp * b.response_mask)


def test_update_policy_changes_parameters_and_lowers_loss():
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    b = _batch_with_old_logprobs(model, [1.0, -1.0, 0.5])
    opt = build_optimizer(model, lr=1e-3)
    sched = build_scheduler(opt, schedule="constant", warmup_steps=0, total_steps=10)
    losses = []
    for _ in range(4):
        st = update_policy(model, opt, b.split(2), scheduler=sched, clip_eps=10.0, max_grad_norm=1.0)
        losses.append(st["pg_loss"])
        assert all(math.isfinite(v) for v in st.values())
        assert st["optimizer_steps"] == 1 and st["skipped_steps"] == 0 and "kl" not in st
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 1e-3
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the positive-advantage sequence became more likely, the negative one less
    with torch.no_grad():
        lp, _, _ = token_logprobs(model, b.input_ids, b.attention_mask)
    seq_delta = ((lp - b.old_logprobs) * b.response_mask).sum(1)
    assert seq_delta[0] > 0 and seq_delta[1] < 0


def test_update_policy_epochs_and_micro_steps_count():
    model = tiny_model()
    b = _batch_with_old_logprobs(model, [1.0, -1.0, 0.5])
    opt = build_optimizer(model, lr=1e-3)
    st = update_policy(model, opt, b.split(1), epochs=2, micro_batches_per_step=2)
    assert st["optimizer_steps"] == 4  # ceil(3 / 2) * 2 epochs
    assert st["ratio_max"] > 1.0  # the second step of each epoch sees an updated policy


def test_gradient_accumulation_equals_one_big_batch():
    for aggregation in ("token_mean", "seq_mean"):
        m1 = tiny_model()
        m2 = copy.deepcopy(m1)
        b = _batch_with_old_logprobs(m1, [1.0, -1.0, 0.5])
        o1 = torch.optim.SGD(m1.parameters(), lr=0.1)
        o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
        s1 = update_policy(m1, o1, [b], aggregation=aggregation, max_grad_norm=None)
        s2 = update_policy(m2, o2, b.split(1), aggregation=aggregation, max_grad_norm=None)
        assert s1["loss"] == pytest.approx(s2["loss"], abs=1e-6)
        assert s1["grad_norm"] == pytest.approx(s2["grad_norm"], rel=1e-4)
        for (k, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
            torch.testing.assert_close(p1, p2, atol=1e-6, rtol=1e-5, msg=k)


def _count_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_kl_reference_runs_only_when_coefficient_positive():
    model = tiny_model()
    ref = tiny_model(seed=1)  # a different model, so the KL is non-trivial
    for p in ref.parameters():
        p.requires_grad_(False)
    calls = _count_forwards(ref)
    b = _batch_with_old_logprobs(model, [1.0, -1.0, 0.5])
    opt = build_optimizer(model, lr=1e-3)
    st = update_policy(model, opt, b.split(2), kl_coef=0.0, ref_model=ref)
    assert calls[0] == 0 and "kl" not in st
    st = update_policy(model, opt, b.split(2), kl_coef=0.1, ref_model=ref, epochs=2)
    assert calls[0] == 4 and st["kl"] > 0  # 2 micro-batches x 2 epochs, k3 >= 0
    with torch.no_grad():
        ref_lp, _, _ = token_logprobs(ref, b.input_ids, b.attention_mask)
    calls[0] = 0
    st = update_policy(model, opt, b.replace(ref_logprobs=ref_lp).split(2), kl_coef=0.1, ref_model=ref)
    assert calls[0] == 0 and st["kl"] > 0  # precomputed reference log-probs are used
    with pytest.raises(ValueError, match="ref_model"):
        update_policy(model, opt, [b], kl_coef=0.1)


def test_kl_term_matches_hand_assembled_loss():
    model = tiny_model()
    ref = tiny_model(seed=1)
    b = _batch_with_old_logprobs(model, [1.0, -1.0, 0.5])
    with torch.no_grad():
        lp, _, _ = token_logprobs(model, b.input_ids, b.attention_mask)
        ref_lp, _, _ = token_logprobs(ref, b.input_ids, b.attention_mask)
        pg, _ = policy_loss(lp, b.old_logprobs, b.advantages, b.response_mask, clip_eps=0.2)
        kl = masked_aggregate(kl_penalty(lp, ref_lp, b.response_mask), b.response_mask)
    st = update_policy(model, torch.optim.SGD(model.parameters(), lr=0.0), [b], kl_coef=0.3, ref_model=ref)
    assert st["loss"] == pytest.approx(pg.item() + 0.3 * kl.item(), abs=1e-6)
    assert st["kl"] == pytest.approx(kl.item(), abs=1e-6)


def test_update_policy_with_value_head():
    model = tiny_model()
    head = ValueHead(32)
    b = _batch_with_old_logprobs(model, [1.0, -1.0, 0.5])
    with torch.no_grad():
        _, _, hidden = token_logprobs(model, b.input_ids, b.attention_mask, return_hidden=True)
        values = head.token_values(hidden)
    returns = b.response_mask * 2.0
    b = b.replace(returns=returns, old_values=values * b.response_mask)
    w0 = head.linear.weight.detach().clone()
    opt = build_optimizer([model, head], lr=1e-2)
    first = update_policy(model, opt, b.split(2), value_head=head, value_coef=0.5, value_clip=100.0)
    for _ in range(5):
        last = update_policy(model, opt, b.split(2), value_head=head, value_coef=0.5, value_clip=100.0)
    assert first["value_loss"] == pytest.approx(0.5 * ((values - 2.0) ** 2 * b.response_mask).sum().item() / 9, rel=1e-4)
    assert last["value_loss"] < first["value_loss"]
    assert not torch.equal(head.linear.weight, w0)
    with pytest.raises(ValueError, match="returns"):
        update_policy(model, opt, [fixed_batch()], value_head=head)


def test_nonfinite_gradient_step_is_skipped():
    model = tiny_model()
    b = _batch_with_old_logprobs(model, [1.0, -1.0, 0.5])
    b = b.replace(advantages=b.advantages * float("nan"))
    before = copy.deepcopy(model.state_dict())
    st = update_policy(model, build_optimizer(model, lr=1e-2), [b])
    assert st["skipped_steps"] == 1 and st["optimizer_steps"] == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_update_policy_on_lora_model_trains_only_the_adapter():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    b = _batch_with_old_logprobs(model, [1.0, -1.0, 0.5])
    opt = build_optimizer(model, lr=1e-2)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    for _ in range(2):
        st = update_policy(model, opt, [b])
    assert math.isfinite(st["loss"])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed)
