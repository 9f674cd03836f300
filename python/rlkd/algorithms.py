"""Policy-gradient losses and the pieces of one update step (GRPO family and PPO).

Everything here is a pure function on tensors except `update_policy`, which runs one
optimisation step (or several: epochs x mini-batches) for the training loop.

Token alignment (used by every tensor in this module)
-----------------------------------------------------
All per-token tensors are ``[B, T]`` and aligned with ``input_ids``: column ``t`` belongs to
token ``t``. ``logprobs[b, t] = log p(input_ids[b, t] | input_ids[b, :t])``, computed from the
model's logits at position ``t - 1``; column 0 has no prediction and is 0. Likewise
``values[b, t]`` is the value of the state *before* token ``t`` is emitted (value head applied to
the hidden state at ``t - 1``). ``response_mask[b, t] = 1`` exactly on response tokens, so a
prompt must be non-empty (its last token's logits predict the first response token).

Batches are right-padded, so HF position ids (0..L-1 per row) are correct without passing them.

GRPO-family advantages come from ``rlkd._core.group_advantages`` (one number per sequence,
broadcast to its tokens by `make_policy_batch`); PPO advantages from ``rlkd._core.gae`` over
the flat response tokens (`sequence_rewards_to_token_rewards`, `ppo_advantages`).

Dropout: the PPO ratio assumes the same function computed the old and the new log-probs; keep
dropout off in the policy (the models module sets it to 0) or call ``model.eval()``. This
module never changes the train/eval mode of a model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "PolicyBatch",
    "ValueHead",
    "build_optimizer",
    "build_scheduler",
    "flat_to_response",
    "gather_logprobs",
    "kl_penalty",
    "make_policy_batch",
    "masked_aggregate",
    "masked_whiten",
    "policy_loss",
    "ppo_advantages",
    "response_to_flat",
    "sequence_rewards_to_token_rewards",
    "token_logprobs",
    "update_policy",
    "value_loss",
]

AGGREGATIONS = ("token_mean", "seq_mean")
KL_ESTIMATORS = ("k1", "k2", "k3")
SCHEDULES = ("constant", "linear", "cosine")

# fp32 elements materialised at once when turning [N, V] logits into log-probs (64 MiB).
_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@dataclass
class PolicyBatch:
    """One right-padded batch of (prompt + response) sequences; every tensor is ``[B, T]``.

    input_ids       long   token ids, ``pad_id`` after each sequence's end
    attention_mask  long   1 on real (prompt or response) tokens, 0 on padding
    response_mask   float  1 on response tokens (see the module docstring for the alignment)
    old_logprobs    float  log-probs of the tokens under the sampling policy; 0 off-response
    advantages      float  per-token advantages; 0 off-response
    returns         float  PPO value targets (optional)
    old_values      float  PPO values at sampling time (optional, for value clipping)
    ref_logprobs    float  log-probs under the frozen reference (optional; when present the
                           update uses them instead of running the reference model)
    sampling_logprobs float  the rollout engine's own log-probs of the tokens (optional; NaN where it
                           reported none): only measured against the policy's, never trained on
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    old_logprobs: Tensor
    advantages: Tensor
    returns: Tensor | None = None
    old_values: Tensor | None = None
    ref_logprobs: Tensor | None = None
    sampling_logprobs: Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_mask.sum().item())

    @property
    def response_lengths(self) -> list[int]:
        return [int(x) for x in self.response_mask.sum(dim=1).tolist()]

    def _tensors(self) -> dict[str, Tensor | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to(self, device: torch.device | str) -> PolicyBatch:
        moved = {k: None if v is None else v.to(device) for k, v in self._tensors().items()}
        return PolicyBatch(**moved)  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> PolicyBatch:
        return dataclasses.replace(self, **changes)

    def split(self, micro_batch_size: int) -> list[PolicyBatch]:
        """Rows in chunks of ``micro_batch_size``, each trimmed to its own longest sequence."""
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        out = []
        for start in range(0, len(self), micro_batch_size):
            rows = slice(start, start + micro_batch_size)
            width = max(int(self.attention_mask[rows].sum(dim=1).max().item()), 1)
            part = {k: None if v is None else v[rows, :width].contiguous() for k, v in self._tensors().items()}
            out.append(PolicyBatch(**part))  # type: ignore[arg-type]
        return out

    def with_advantages(
        self,
        advantages: np.ndarray | Tensor | Sequence[float],
        *,
        returns: np.ndarray | Tensor | Sequence[float] | None = None,
        old_values: Tensor | None = None,
    ) -> PolicyBatch:
        """A copy with advantages (and PPO returns/old values) filled in.

        ``advantages``/``returns`` are either flat over the response tokens (row-major, the
        layout of ``rlkd._core.gae``; length = number of response tokens) or one number per
        sequence (length B; broadcast to that sequence's response tokens, as for GRPO).
        ``old_values`` is a ``[B, T]`` tensor aligned like everything else.
        """
        adv = self._expand(advantages)
        ret = None if returns is None else self._expand(returns)
        return dataclasses.replace(
            self,
            advantages=adv,
            returns=ret if ret is not None else self.returns,
            old_values=(old_values.detach().float() * self.response_mask) if old_values is not None else self.old_values,
        )

    def _expand(self, x: np.ndarray | Tensor | Sequence[float]) -> Tensor:
        t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, Tensor) else x)
        t = t.to(device=self.response_mask.device, dtype=torch.float32).reshape(-1)
        n_tok, n_seq = self.num_response_tokens, len(self)
        if t.numel() == n_tok:
            return flat_to_response(t, self.response_mask)
        if t.numel() == n_seq:
            return t[:, None] * self.response_mask
        raise ValueError(
            f"expected {n_tok} per-token values (flat over response tokens) or {n_seq} per-sequence "
            f"values, got {t.numel()}"
        )


def _ragged(name: str, values: Sequence[Sequence[float]] | None, lengths: list[int]) -> None:
    if values is None:
        return
    if len(values) != len(lengths):
        raise ValueError(f"{name}: expected {len(lengths)} sequences, got {len(values)}")
    for i, (v, n) in enumerate(zip(values, lengths)):
        if len(v) != n:
            raise ValueError(f"{name}[{i}]: expected {n} values (one per response token), got {len(v)}")


def make_policy_batch(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    old_logprobs: Sequence[Sequence[float]] | None = None,
    token_advantages: Sequence[Sequence[float]] | None = None,
    seq_advantages: Sequence[float] | None = None,
    returns: Sequence[Sequence[float]] | None = None,
    old_values: Sequence[Sequence[float]] | None = None,
    ref_logprobs: Sequence[Sequence[float]] | None = None,
    sampling_logprobs: Sequence[Sequence[float]] | None = None,
    device: torch.device | str | None = None,
) -> PolicyBatch:
    """Build a right-padded `PolicyBatch` from ragged prompt / response token ids.

    Row ``b`` is ``prompt_ids[b] + response_ids[b]`` followed by ``pad_id``; ``T`` is the longest
    row. Per-token inputs (``old_logprobs``, ``token_advantages``, ``returns``, ``old_values``,
    ``ref_logprobs``) have one value per *response* token and land on the response positions;
    ``seq_advantages`` (one per sequence, e.g. from ``rlkd._core.group_advantages``) is broadcast
    to the sequence's response tokens. Give at most one of the two advantage forms; with neither,
    advantages are 0 (fill them later with `PolicyBatch.with_advantages`). Missing
    ``old_logprobs`` are 0 (recompute them with `token_logprobs` under ``torch.no_grad``).
    Prompts must be non-empty; an empty response is allowed and contributes no tokens.
    """
    n = len(prompt_ids)
    if len(response_ids) != n:
        raise ValueError(f"{n} prompts but {len(response_ids)} responses")
    if n == 0:
        raise ValueError("empty batch")
    if token_advantages is not None and seq_advantages is not None:
        raise ValueError("give token_advantages or seq_advantages, not both")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: the first response token needs a preceding position")
    resp_lens = [len(r) for r in response_ids]
    for name, vals in (
        ("old_logprobs", old_logprobs),
        ("token_advantages", token_advantages),
        ("returns", returns),
        ("old_values", old_values),
        ("ref_logprobs", ref_logprobs),
        ("sampling_logprobs", sampling_logprobs),
    ):
        _ragged(name, vals, resp_lens)
    if seq_advantages is not None and len(seq_advantages) != n:
        raise ValueError(f"seq_advantages: expected {n} values, got {len(seq_advantages)}")

    width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    ids = np.full((n, width), pad_id, dtype=np.int64)
    attn = np.zeros((n, width), dtype=np.int64)
    rmask = np.zeros((n, width), dtype=np.float32)
    floats = {
        k: (v, np.zeros((n, width), dtype=np.float32))
        for k, v in (
            ("old_logprobs", old_logprobs),
            ("advantages", token_advantages),
            ("returns", returns),
            ("old_values", old_values),
            ("ref_logprobs", ref_logprobs),
            ("sampling_logprobs", sampling_logprobs),
        )
    }
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        lp, lr = len(p), len(r)
        ids[b, :lp] = p
        ids[b, lp : lp + lr] = r
        attn[b, : lp + lr] = 1
        rmask[b, lp : lp + lr] = 1.0
        for vals, arr in floats.values():
            if vals is not None:
                arr[b, lp : lp + lr] = np.asarray(vals[b], dtype=np.float32)
        if seq_advantages is not None:
            floats["advantages"][1][b, lp : lp + lr] = float(seq_advantages[b])

    def t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).to(device) if device is not None else torch.from_numpy(a)

    optional = {k: (t(arr) if vals is not None else None) for k, (vals, arr) in floats.items()}
    return PolicyBatch(
        input_ids=t(ids),
        attention_mask=t(attn),
        response_mask=t(rmask),
        old_logprobs=t(floats["old_logprobs"][1]),
        advantages=t(floats["advantages"][1]),
        returns=optional["returns"],
        old_values=optional["old_values"],
        ref_logprobs=optional["ref_logprobs"],
        sampling_logprobs=optional["sampling_logprobs"],
    )


def logprob_gap(logprobs: Tensor, batch: PolicyBatch) -> tuple[float, float]:
    """(sum of |logprobs - batch.sampling_logprobs|, tokens) over the response tokens where both
    are finite: the rollout/training mismatch, as verl and TRL report it. (0, 0) without them."""
    if batch.sampling_logprobs is None:
        return 0.0, 0.0
    lp = logprobs.detach().float()
    ok = (batch.response_mask > 0) & torch.isfinite(batch.sampling_logprobs) & torch.isfinite(lp)
    return float((lp - batch.sampling_logprobs).abs()[ok].sum()), float(ok.sum())


def response_to_flat(x: Tensor, response_mask: Tensor) -> np.ndarray:
    """``[B, T]`` -> float32 numpy array of the response tokens, row-major (ragged-flat layout)."""
    return x.detach()[response_mask.bool()].float().cpu().numpy()


def flat_to_response(flat: Tensor | np.ndarray, response_mask: Tensor) -> Tensor:
    """Inverse of `response_to_flat`: scatter flat response values into a zero ``[B, T]`` tensor."""
    out = torch.zeros(response_mask.shape, dtype=torch.float32, device=response_mask.device)
    out[response_mask.bool()] = torch.as_tensor(flat, dtype=torch.float32).to(response_mask.device)
    return out


# --------------------------------------------------------------------------------------------
# Log-probs, entropy, hidden states
# --------------------------------------------------------------------------------------------


class _GatherLogProb(torch.autograd.Function):
    """log_softmax(logits / T)[target] in fp32, chunked over rows.

    Saves only the logits (in the model's dtype) and one fp32 log-sum-exp per row; the backward
    recomputes the softmax chunk by chunk, so no ``[N, V]`` fp32 tensor outlives a chunk.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, temperature: float) -> Tensor:  # type: ignore[override]
        n, v = logits.shape
        chunk = max(1, _CHUNK_ELEMENTS // max(v, 1))
        out = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        for s in range(0, n, chunk):
            x = logits[s : s + chunk].float() / temperature  # out-of-place: never touches logits
            l = torch.logsumexp(x, dim=-1)
            out[s : s + chunk] = x.gather(-1, targets[s : s + chunk, None]).squeeze(-1) - l
            lse[s : s + chunk] = l
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, targets, lse = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        grad = torch.empty_like(logits)
        grad_out = grad_out.float()
        for s in range(0, logits.shape[0], chunk):
            x = logits[s : s + chunk].float() / temperature
            g_row = grad_out[s : s + chunk, None]
            g = torch.exp(x - lse[s : s + chunk, None]).mul_(-g_row)  # -p * g
            g.scatter_add_(-1, targets[s : s + chunk, None], g_row)  # + onehot * g
            grad[s : s + chunk] = g.div_(temperature).to(grad.dtype)
        return grad, None, None


def gather_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(logits / temperature)[targets]`` for ``logits`` ``[N, V]`` (any float dtype),
    ``targets`` ``[N]``: ``[N]`` fp32, differentiable, without an fp32 ``[N, V]`` copy."""
    return _GatherLogProb.apply(logits, targets, float(temperature))


@torch.no_grad()
def _entropy(logits: Tensor, temperature: float) -> Tensor:
    n, v = logits.shape
    chunk = max(1, _CHUNK_ELEMENTS // max(v, 1))
    out = torch.empty(n, dtype=torch.float32, device=logits.device)
    for s in range(0, n, chunk):
        x = logits[s : s + chunk].float() / temperature
        l = torch.logsumexp(x, dim=-1, keepdim=True)
        out[s : s + chunk] = (l.squeeze(-1) - (torch.exp(x - l) * x).sum(-1))
    return out


def _shift_right(x: Tensor) -> Tensor:
    """[B, T, ...] -> same shape with x[:, t-1] at column t and zeros in column 0."""
    out = torch.zeros_like(x)
    out[:, 1:] = x[:, :-1]
    return out


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    return_hidden: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-token log-probs of ``input_ids`` under ``model`` (one forward pass).

    Returns ``(logprobs, entropy, hidden)``:

    - ``logprobs`` ``[B, T]`` fp32, aligned with the tokens: column t is
      ``log softmax(logits[t-1] / temperature)[input_ids[t]]``; column 0 is 0. Differentiable.
      The log-softmax runs in fp32 even when the model runs in bf16, chunked so that no fp32
      ``[B, T, V]`` copy is kept (see `_GatherLogProb`).
    - ``entropy`` ``[B, T]`` fp32 (same alignment: entropy of the distribution that produced
      token t), detached (a diagnostic; no entropy bonus), or None.
    - ``hidden`` ``[B, T, H]`` the last hidden state, *unshifted* (row t saw tokens <= t), for
      `ValueHead.token_values`; or None.

    ``temperature`` must match the sampler's when these are compared to sampling log-probs.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=return_hidden, use_cache=False)
    logits = out.logits  # [B, T, V], model dtype
    b, t, v = logits.shape
    flat = logits.reshape(b * t, v)  # a view: logits are contiguous
    targets = torch.zeros_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]  # position t predicts token t+1; the last column is a dummy
    lp_next = gather_logprobs(flat, targets.reshape(-1), temperature).view(b, t)
    logprobs = _shift_right(lp_next)
    entropy = _shift_right(_entropy(flat, float(temperature)).view(b, t)) if return_entropy else None
    hidden = out.hidden_states[-1] if return_hidden else None
    return logprobs, entropy, hidden


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def masked_aggregate(x: Tensor, mask: Tensor, aggregation: str = "token_mean", denominator: float | None = None) -> Tensor:
    """Reduce a ``[B, T]`` per-token tensor over ``mask`` to a scalar.

    token_mean: sum of all masked values / number of masked tokens.
    seq_mean:   mean over sequences (with >= 1 token) of each sequence's masked token mean.
    ``denominator`` replaces the count (tokens or sequences) -- pass the total over all
    micro-batches of one optimizer step so gradient accumulation equals one big batch.
    Empty masks give 0.
    """
    mask = mask.to(x.dtype)
    if aggregation == "token_mean":
        count = mask.sum() if denominator is None else torch.as_tensor(float(denominator), device=x.device)
        return (x * mask).sum() / count.clamp(min=1.0)
    if aggregation == "seq_mean":
        per_tok = mask.sum(dim=1)
        per_seq = (x * mask).sum(dim=1) / per_tok.clamp(min=1.0)
        count = (per_tok > 0).sum().to(x.dtype) if denominator is None else torch.as_tensor(float(denominator), device=x.device)
        return per_seq.sum() / count.clamp(min=1.0)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def _count(mask: Tensor, aggregation: str) -> int:
    """The denominator `masked_aggregate` uses for this mask (tokens or non-empty sequences)."""
    if aggregation == "seq_mean":
        return int((mask.sum(dim=1) > 0).sum().item())
    return int(mask.sum().item())


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float,
    aggregation: str = "token_mean",
    denominator: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip surrogate, all inputs ``[B, T]``; returns ``(loss, stats)``.

    ratio = exp(logp - old); per token ``max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps))``,
    aggregated by `masked_aggregate`. Stats (over masked tokens): ``clip_frac`` (tokens where the
    clipped term is strictly larger, i.e. the gradient is cut), ``approx_kl`` = mean of
    ``(ratio - 1) - log ratio`` (k3 estimate of KL(old || new)), ``ratio_mean``, ``ratio_max``.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    on = mask.bool()
    mask = mask.to(torch.float32)
    log_ratio = torch.where(on, logprobs - old_logprobs, 0.0)  # 0 off-mask: ratio 1, no inf/nan
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    loss = masked_aggregate(per_token, mask, aggregation, denominator)
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        stats = {
            "clip_frac": float(((clipped > unclipped).float() * mask).sum() / n),
            "approx_kl": float((((ratio - 1.0) - log_ratio) * mask).sum() / n),
            "ratio_mean": float((ratio * mask).sum() / n),
            "ratio_max": float(ratio[on].max()) if on.any() else 1.0,
        }
    return loss, stats


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, *, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy, ``[B, T]``.

    With d = logp - logp_ref:  k1 = d (unbiased, can be negative; what ReFT folds into rewards);
    k2 = d^2 / 2;  k3 = exp(-d) + d - 1 = exp(ref - logp) - (ref - logp) - 1 (unbiased,
    always >= 0; Schulman). Zero outside ``mask``. d is clamped to [-20, 20] for k3 so one
    extreme token cannot overflow.

    As a LOSS term (samples from the policy, no gradient through the sampling) the estimators'
    expected gradients differ from their values: k1's is 0 (E_π[∇log π] = 0: no KL pull at all,
    which is why only PPO's in-reward KL may use it), k2's is exactly ∇KL(π‖ref), k3's is
    ∇KL(ref‖π).
    """
    d = torch.where(mask.bool(), logprobs - ref_logprobs, 0.0)
    if estimator == "k1":
        out = d
    elif estimator == "k2":
        out = 0.5 * d * d
    elif estimator == "k3":
        d = d.clamp(-20.0, 20.0)
        out = torch.exp(-d) + d - 1.0
    else:
        raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    return out * mask


class ValueHead(nn.Module):
    """Linear ``hidden_size -> 1`` value head in fp32 (PPO). Initialised small: N(0, init_std), bias 0."""

    def __init__(self, hidden_size: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.linear = nn.Linear(self.hidden_size, 1, dtype=torch.float32)
        nn.init.normal_(self.linear.weight, std=init_std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """``[B, T, H]`` (any dtype) -> ``[B, T]`` fp32, one value per position (unshifted)."""
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)

    def token_values(self, hidden: Tensor) -> Tensor:
        """Values aligned with tokens: column t = V(state before token t) = head(hidden[:, t-1])."""
        return _shift_right(self(hidden))

    def save(self, path: str | Any) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={"hidden_size": str(self.hidden_size), "format": "rlkd.ValueHead"})

    def load(self, path: str | Any) -> ValueHead:
        """Load weights in place from a file written by `save`; returns self."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if int(meta.get("hidden_size", self.hidden_size)) != self.hidden_size:
            raise ValueError(f"{path}: value head for hidden_size {meta['hidden_size']}, this one has {self.hidden_size}")
        self.load_state_dict(load_file(str(path), device=str(self.linear.weight.device)))
        return self

    @classmethod
    def from_file(cls, path: str | Any, device: torch.device | str | None = None) -> ValueHead:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            hidden_size = int((f.metadata() or {})["hidden_size"])
        head = cls(hidden_size)
        if device is not None:
            head.to(device)
        return head.load(path)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float,
    aggregation: str = "token_mean",
    denominator: float | None = None,
) -> Tensor:
    """Clipped value loss (PPO / ReFT): ``0.5 * agg(max((v - R)^2, (v_clip - R)^2))`` with
    ``v_clip = old + clamp(v - old, -clip, clip)``; ``clip = 0`` turns clipping off (plain
    ``0.5 * agg((v - R)^2)``: clamping to a zero range would freeze the value head). All inputs
    ``[B, T]``; token_mean by default."""
    if clip < 0:
        raise ValueError(f"value clip must be >= 0, got {clip}")
    per_token = (values - returns) ** 2
    if clip > 0:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        per_token = torch.maximum(per_token, (v_clipped - returns) ** 2)
    return 0.5 * masked_aggregate(per_token, mask.to(values.dtype), aggregation, denominator)


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8,
                  reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """(x - mean) / std over masked entries (population std); 0 off-mask. As TRL/ReFT whiten PPO
    advantages over the batch. Data-parallel: ``reduce`` sums a tensor over every rank
    (`rlkd.distributed.DistContext.sum_tensor`), so mean and std are those of the global batch."""
    total = reduce or (lambda t: t)
    mask = mask.to(x.dtype)
    sums = total(torch.stack([(x * mask).sum(), mask.sum()]))
    n = sums[1].clamp(min=1.0)
    mean = sums[0] / n
    var = total((((x - mean) * mask) ** 2).sum()) / n
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def sequence_rewards_to_token_rewards(
    scores: Sequence[float] | np.ndarray,
    response_lengths: Sequence[int] | np.ndarray,
    *,
    kl: Sequence[Sequence[float]] | np.ndarray | Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token PPO rewards as flat float32 + int64 lengths, the inputs of ``rlkd._core.gae``.

    Token t of sequence i gets ``-kl_coef * kl[i][t]`` and its last token also gets
    ``scores[i]`` (ReFT: the sequence reward on the last response token, the KL penalty folded
    into every token's reward). ``kl`` is ragged per sequence or flat over all response tokens
    (e.g. ``response_to_flat(kl_penalty(..., estimator="k1"), mask)``). A sequence with an
    empty response contributes no tokens (and so no reward).
    """
    lengths = np.asarray(response_lengths, dtype=np.int64).reshape(-1)
    scores_arr = np.asarray(scores, dtype=np.float32).reshape(-1)
    if scores_arr.shape[0] != lengths.shape[0]:
        raise ValueError(f"{scores_arr.shape[0]} scores but {lengths.shape[0]} response lengths")
    if (lengths < 0).any():
        raise ValueError("response lengths must be >= 0")
    total = int(lengths.sum())
    rewards = np.zeros(total, dtype=np.float32)
    if kl is not None and kl_coef != 0.0:
        if isinstance(kl, Tensor):
            kl_flat = kl.detach().float().cpu().numpy().reshape(-1)
        elif isinstance(kl, np.ndarray):
            kl_flat = kl.astype(np.float32).reshape(-1)
        else:
            kl_flat = np.concatenate([np.asarray(k, dtype=np.float32).reshape(-1) for k in kl] or [np.zeros(0, np.float32)])
        if kl_flat.shape[0] != total:
            raise ValueError(f"kl has {kl_flat.shape[0]} values but the responses have {total} tokens")
        rewards -= np.float32(kl_coef) * kl_flat
    ends = np.cumsum(lengths) - 1
    has_tokens = lengths > 0
    rewards[ends[has_tokens]] += scores_arr[has_tokens]
    return rewards, lengths


def ppo_advantages(
    batch: PolicyBatch,
    scores: Sequence[float] | np.ndarray,
    values: Tensor,
    *,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[PolicyBatch, dict[str, float]]:
    """PPO advantages for a batch whose ``old_logprobs`` are filled: token rewards (score on the
    last token, ``-kl_coef * k1`` per token when ``ref_logprobs`` is given), GAE from
    ``rlkd._core.gae`` over the response tokens with ``values`` (``[B, T]``, from
    `ValueHead.token_values` at sampling time), optional whitening of the advantages over the
    batch (over all ranks' batches with ``reduce``, see `masked_whiten`). Returns the batch with
    advantages / returns / old_values set, and stats."""
    from rlkd import _core

    mask = batch.response_mask
    kl_flat = None
    stats: dict[str, float] = {}
    if ref_logprobs is not None and kl_coef != 0.0:
        kl_tok = kl_penalty(batch.old_logprobs, ref_logprobs, mask, estimator="k1")
        kl_flat = response_to_flat(kl_tok, mask)
        stats["reward_kl"] = float(kl_flat.mean()) if kl_flat.size else 0.0
    rewards, lengths = sequence_rewards_to_token_rewards(scores, batch.response_lengths, kl=kl_flat, kl_coef=kl_coef)
    gae = getattr(_core, "gae")  # the binding lands with the numeric-kernels branch
    adv_flat, ret_flat = gae(rewards, response_to_flat(values, mask), lengths, float(gamma), float(lam))
    adv = flat_to_response(np.asarray(adv_flat), mask)
    if whiten:
        adv = masked_whiten(adv, mask, reduce=reduce)
    out = batch.replace(advantages=adv, returns=flat_to_response(np.asarray(ret_flat), mask), old_values=values.detach().float() * mask)
    stats["returns_mean"] = float(np.mean(ret_flat)) if len(ret_flat) else 0.0
    return out, stats


# --------------------------------------------------------------------------------------------
# Optimiser and schedule
# --------------------------------------------------------------------------------------------


def _collect_params(params: nn.Module | Iterable[nn.Module | nn.Parameter]) -> list[nn.Parameter]:
    items = [params] if isinstance(params, nn.Module) else list(params)
    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for item in items:
        for p in item.parameters() if isinstance(item, nn.Module) else [item]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def build_optimizer(
    params: nn.Module | Iterable[nn.Module | nn.Parameter],
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``params`` (a module, or an iterable of modules
    and/or parameters, e.g. ``[model, value_head]``). Weight decay applies to matrices only:
    parameters with fewer than 2 dims (biases, norm scales) are not decayed. Tied parameters
    are counted once; frozen ones (LoRA base weights) are left out."""
    trainable = _collect_params(params)
    if not trainable:
        raise ValueError("no trainable parameters")
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LR multiplier at scheduler step s (0 before the first ``scheduler.step()``):

    warm-up (s < warmup_steps): (s + 1) / warmup_steps  -- the first update already moves;
    then with p = clamp((s - warmup_steps) / max(1, total_steps - warmup_steps), 0, 1):
    constant 1; linear  m + (1 - m)(1 - p);  cosine  m + (1 - m) * 0.5 (1 + cos(pi p)),
    where m = ``min_lr_ratio``. Step it once per training step.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError("warmup_steps and total_steps must be >= 0")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        p = min(max((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0), 1.0)
        shape = 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------
# One update
# --------------------------------------------------------------------------------------------


def update_policy(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[PolicyBatch],
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    epochs: int = 1,
    micro_batches_per_step: int | None = None,
    clip_eps: float = 0.2,
    aggregation: str = "token_mean",
    max_grad_norm: float | None = 1.0,
    temperature: float = 1.0,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    ref_model: nn.Module | None = None,
    value_head: ValueHead | None = None,
    value_coef: float = 0.1,
    value_clip: float = 0.2,
    on_policy: bool = False,
    count_reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """One training step: ``epochs`` passes over ``micro_batches``, an optimizer step after every
    ``micro_batches_per_step`` micro-batches (default: all of them = one step per epoch) with
    gradient accumulation, grad-norm clipping and a non-finite-gradient guard.

    loss = pg_loss + kl_coef * kl + value_coef * value_loss, each aggregated with
    ``aggregation`` over the whole accumulated mini-batch (so accumulation equals one big batch).
    The KL term exists only when ``kl_coef > 0``: reference log-probs come from
    ``batch.ref_logprobs`` when set, else from ``ref_model`` (never run otherwise). The value
    term exists only with ``value_head`` (whose parameters belong in ``optimizer``); batches
    then need ``returns`` and ``old_values``. ``on_policy=True`` takes the old log-probs as the
    current ones, detached (ratio 1, the plain policy gradient): exact when the policy has not
    moved since sampling (one epoch, one optimizer step), and it saves a forward pass. ``scheduler`` (if given) is stepped once at the
    end: it counts training steps, not optimizer steps.

    Data-parallel (``model`` a DDP module, rlkd.distributed): ``count_reduce`` maps this rank's
    loss divisors ``[policy count, value-loss tokens]`` of an optimizer step to the ones to use
    (the counts over all ranks / N); DDP averages the gradients at every backward. Every rank
    must pass as many micro-batches.

    Returns means over micro-batches (token-weighted for per-token stats): loss, pg_loss,
    entropy, clip_frac, approx_kl, ratio_mean, ratio_max (max), kl and value_loss (when
    computed); rollout_logprob_diff (batches with ``sampling_logprobs``: mean |Δ| per token between
    the engine's log-probs and the policy's, over the micro-batches before the first optimizer step); grad_norm (mean over optimizer steps, before clipping), lr, optimizer_steps,
    skipped_steps (non-finite gradients: step skipped, gradients dropped).
    """
    if not micro_batches:
        raise ValueError("no micro-batches")
    if on_policy and (epochs != 1 or (micro_batches_per_step or len(micro_batches)) < len(micro_batches)):
        raise ValueError("on_policy needs one epoch and one optimizer step (the policy must not move before the loss)")
    if kl_coef > 0 and kl_estimator == "k1":
        raise ValueError("kl_estimator 'k1' as a loss term has zero expected gradient (no KL pull); use 'k2' "
                         "(exact gradient of KL(policy || ref)) or 'k3'")
    if kl_coef > 0 and ref_model is None and any(mb.ref_logprobs is None for mb in micro_batches):
        raise ValueError("kl_coef > 0 needs ref_model or precomputed batch.ref_logprobs")
    if value_head is not None and any(mb.returns is None or mb.old_values is None for mb in micro_batches):
        raise ValueError("a value head needs batch.returns and batch.old_values")
    per_step = micro_batches_per_step or len(micro_batches)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    ratio_max = 0.0
    grad_norms: list[float] = []
    skipped = 0

    def add(key: str, value: float, weight: float = 1.0) -> None:
        sums[key] = sums.get(key, 0.0) + value * weight
        weights[key] = weights.get(key, 0.0) + weight

    for epoch in range(epochs):
        for start in range(0, len(micro_batches), per_step):
            first_pass = epoch == 0 and start == 0  # the policy that sampled (before any optimizer step)
            group = [mb.to(device) for mb in micro_batches[start : start + per_step]]
            denom = sum(_count(mb.response_mask, aggregation) for mb in group)
            v_denom = sum(mb.num_response_tokens for mb in group)
            if count_reduce is not None:
                denom, v_denom = count_reduce(torch.tensor([denom, v_denom], dtype=torch.float64)).tolist()
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for mb in group:
                mask = mb.response_mask
                logp, entropy, hidden = token_logprobs(
                    model, mb.input_ids, mb.attention_mask, temperature=temperature,
                    return_entropy=True, return_hidden=value_head is not None,
                )  # fmt: skip
                old = logp.detach() if on_policy else mb.old_logprobs
                if first_pass:
                    gap, gap_n = logprob_gap(logp, mb)
                    if gap_n:
                        add("rollout_logprob_diff", gap / gap_n, gap_n)
                loss, st = policy_loss(logp, old, mb.advantages, mask, clip_eps=clip_eps, aggregation=aggregation, denominator=denom)
                n_tok = float(mask.sum())
                add("pg_loss", float(loss.detach()))
                for k in ("clip_frac", "approx_kl", "ratio_mean"):
                    add(k, st[k], n_tok)
                ratio_max = max(ratio_max, st["ratio_max"])
                assert entropy is not None
                add("entropy", float((entropy * mask).sum()) / max(n_tok, 1.0), n_tok)
                if kl_coef > 0:
                    ref = mb.ref_logprobs
                    if ref is None:
                        assert ref_model is not None
                        with torch.no_grad():
                            ref, _, _ = token_logprobs(ref_model, mb.input_ids, mb.attention_mask, temperature=temperature)
                    kl_tok = kl_penalty(logp, ref, mask, estimator=kl_estimator)
                    kl = masked_aggregate(kl_tok, mask, aggregation, denom)
                    loss = loss + kl_coef * kl
                    add("kl", float((kl_tok.detach()).sum()) / max(n_tok, 1.0), n_tok)
                if value_head is not None:
                    assert hidden is not None and mb.old_values is not None and mb.returns is not None
                    values = value_head.token_values(hidden)
                    vl = value_loss(values, mb.old_values, mb.returns, mask, clip=value_clip, denominator=v_denom)
                    loss = loss + value_coef * vl
                    add("value_loss", float(vl.detach()))
                loss.backward()
                step_loss += float(loss.detach())
            sums["loss"] = sums.get("loss", 0.0) + step_loss
            weights["loss"] = weights.get("loss", 0.0) + 1.0
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
            if hasattr(norm, "full_tensor"):  # FSDP2 (DTensor gradients): the norm over every rank's shards
                norm = norm.full_tensor()
            if torch.isfinite(norm):
                optimizer.step()
                grad_norms.append(float(norm))
            else:
                skipped += 1
            optimizer.zero_grad(set_to_none=True)
    n_steps = math.ceil(len(micro_batches) / per_step) * epochs
    stats = {k: sums[k] / weights[k] if weights[k] else 0.0 for k in sums}
    # pg_loss / value_loss were summed per micro-batch as parts of a step's loss: report per step.
    for k in ("pg_loss", "value_loss"):
        if k in sums:
            stats[k] = sums[k] / n_steps
    stats["ratio_max"] = ratio_max
    stats["grad_norm"] = float(np.mean(grad_norms)) if grad_norms else float("nan")
    stats["lr"] = float(optimizer.param_groups[0]["lr"])
    stats["optimizer_steps"] = float(n_steps - skipped)
    stats["skipped_steps"] = float(skipped)
    if scheduler is not None:
        scheduler.step()
    return stats
