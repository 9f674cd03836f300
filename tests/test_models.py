"""Model specs, dtypes, threads, loading, tiny models, LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlkd import models
from rlkd.models import (
    AdaptersOff,
    ModelSpecError,
    apply_lora,
    load_causal_lm,
    load_sequence_classifier,
    model_cache_key,
    resolve_dtype,
    resolve_model,
    set_torch_threads,
    tiny_random_causal_lm,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16), ("float16", torch.float16), ("fp16", torch.float16),
        ("torch.bfloat16", torch.bfloat16), ("BF16", torch.bfloat16),
    ],
)  # fmt: skip
def test_explicit_dtypes(name: str, expected: torch.dtype) -> None:
    assert resolve_dtype(name, "cpu") == expected


def test_auto_dtype_cpu_follows_bf16_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLKD_CPU_BF16", "1")
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setenv("RLKD_CPU_BF16", "0")
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.delenv("RLKD_CPU_BF16")
    flags = models._cpuinfo_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        assert resolve_dtype("auto", "cpu") == torch.bfloat16
    elif flags and "avx512_bf16" not in flags and "bf16" not in flags:
        assert resolve_dtype("auto", "cpu") == torch.float32


def test_dtype_key_names_what_auto_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    # caches (held-out evals, SFT checkpoints, teacher answers) key on the computation, not the spelling
    monkeypatch.setenv("RLKD_CPU_BF16", "1")
    assert models.dtype_key("auto", "cpu") == models.dtype_key("bf16", "cpu") == "bfloat16"
    monkeypatch.setenv("RLKD_CPU_BF16", "0")
    assert models.dtype_key("auto", "cpu") == models.dtype_key("float32", "cpu") == "float32"
    assert models.dtype_key("bfloat16", "cpu") == "bfloat16"  # an explicit dtype is kept as asked


def test_auto_dtype_cuda_is_bf16_without_touching_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("auto", "cuda:1") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == torch.float16


def test_bad_dtype() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", "cpu")


def test_set_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
        set_torch_threads(None)
        assert torch.get_num_threads() == 1
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError):
                set_torch_threads(bad)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(before)


def test_resolve_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelSpecError, match="unknown embedded model 'gpt5'"):
        resolve_model("embedded:gpt5")
    with pytest.raises(ModelSpecError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelSpecError, match="does not exist"):
        resolve_model("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSpecError, match="is a file"):
        resolve_model(str(tmp_path / "m.gguf"))
    with pytest.raises(ModelSpecError, match="non-empty"):
        resolve_model("  ")
    # A hub id while offline and not cached: a clear error that says what to do.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelSpecError, match="HF_HUB_OFFLINE.*embedded:"):
        resolve_model("SomeOrg/some-model-that-is-not-cached")


def test_resolve_local_and_embedded(tiny_model_path: Path, smollm2_path: Path) -> None:
    assert resolve_model(str(tiny_model_path)) == str(tiny_model_path)
    # embedded:NAME resolves through the cache (the fixture already converted it)
    assert Path(resolve_model("embedded:smollm2-135m-instruct", progress=False)) == smollm2_path


def test_load_causal_lm(tiny_model_path: Path) -> None:
    model, tok = load_causal_lm(str(tiny_model_path), dtype="float32")
    assert not model.training
    assert model.dtype == torch.float32
    assert tok.pad_token_id is not None and tok.padding_side == "left"
    assert tok.chat_template


def test_pad_token_defaults_to_eos(tiny_model_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    tok.pad_token = None
    assert tok.pad_token_id is None
    tok = models._prepare_tokenizer(tok)
    assert tok.pad_token_id == tok.eos_token_id


def test_tiny_random_qwen2(tmp_path: Path, smollm2_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    path = tiny_random_causal_lm(tmp_path / "q", smollm2_path, arch="qwen2", seed=3)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 2
    again = tiny_random_causal_lm(tmp_path / "q2", smollm2_path, arch="qwen2", seed=3)
    other = AutoModelForCausalLM.from_pretrained(again)
    for (n1, p1), (_, p2) in zip(model.named_parameters(), other.named_parameters()):
        assert torch.equal(p1, p2), n1  # same seed, same weights
    with pytest.raises(ValueError, match="arch"):
        tiny_random_causal_lm(tmp_path / "x", smollm2_path, arch="gpt2")


def test_sequence_classifier(tiny_model_path: Path) -> None:
    model, tok = load_sequence_classifier(str(tiny_model_path), dtype="float32")
    assert model.config.pad_token_id == tok.pad_token_id
    batch = tok(["short", "a somewhat longer text"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[0] == 2 and torch.isfinite(logits).all()


def test_apply_lora(tiny_model_path: Path) -> None:
    pytest.importorskip("peft")
    model, _ = load_causal_lm(str(tiny_model_path), dtype="float32")
    peft_model = apply_lora(model, rank=4, alpha=8.0, target_modules=["q_proj", "v_proj"])
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    model2, _ = load_causal_lm(str(tiny_model_path), dtype="float32")
    with pytest.raises(ValueError, match="not found.*q_proj"):
        apply_lora(model2, rank=4, alpha=8.0, target_modules=["query_key_value"])


def test_adapters_off_is_the_model_lora_started_from(tiny_model_path: Path) -> None:
    pytest.importorskip("peft")
    model, _ = load_causal_lm(str(tiny_model_path), dtype="float32")
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        before = model(input_ids=ids).logits.clone()
        peft_model = apply_lora(model, rank=4, alpha=8.0, target_modules=["q_proj", "v_proj"])
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # a trained adapter (lora_B starts at 0: the policy would equal the base)
                p.add_(0.5)
        trained = peft_model(input_ids=ids).logits
        reference = AdaptersOff(peft_model)
        off = reference(input_ids=ids).logits
        again = peft_model(input_ids=ids).logits
    assert not torch.allclose(trained, before, atol=1e-3)
    torch.testing.assert_close(off, before)
    torch.testing.assert_close(again, trained)  # the adapters are back on after the reference's forward
    assert list(reference.parameters()) == []


def test_lora_trains_fp32_adapters_over_a_frozen_half_precision_base(tiny_model_path: Path) -> None:
    pytest.importorskip("peft")
    assert models.trainable_load_dtype("bfloat16", lora_rank=0) == "float32"  # full FT: fp32 masters
    model, _ = load_causal_lm(str(tiny_model_path), dtype=models.trainable_load_dtype("bfloat16", lora_rank=4))
    peft_model = apply_lora(model, rank=4, alpha=8.0, target_modules=["q_proj", "v_proj"])
    dtypes = {p.requires_grad: set() for p in peft_model.parameters()}
    for p in peft_model.parameters():
        dtypes[p.requires_grad].add(p.dtype)
    assert dtypes == {True: {torch.float32}, False: {torch.bfloat16}}


# Peak RSS growth of one forward + backward of a small Llama (vocab kept small so that the layers'
# activations, not the logits, dominate), in a fresh process: RSS is the real memory, and a fresh
# process has no freed-but-kept blocks from an earlier run.
_PEAK_SCRIPT = r"""
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from rlkd.algorithms import token_logprobs
from rlkd.models import enable_gradient_checkpointing
torch.set_num_threads(1)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=512, num_hidden_layers=16,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
model = LlamaForCausalLM(config).eval()
if sys.argv[1] == "on":
    enable_gradient_checkpointing(model)
ids = torch.randint(0, 256, (2, 1024))
def status_kb(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS: imports do not count
before = status_kb("VmRSS")
logp, _, _ = token_logprobs(model, ids, torch.ones_like(ids))
logp.sum().backward()
print((status_kb("VmHWM") - before) / 1024)
"""


def _peak_growth_mib(mode: str) -> float:
    import os
    import subprocess
    import sys

    # Blocks above 64 KiB are mmap'ed and unmapped on free, so RSS follows the live tensors
    # (glibc would otherwise keep freed activations in its heap and the peak would measure that).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, mode], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_gradient_checkpointing_lowers_peak_activation_memory() -> None:
    plain, checkpointed = _peak_growth_mib("off"), _peak_growth_mib("on")
    assert plain > 100, plain  # the measurement sees the activations at all
    assert checkpointed < 0.5 * plain, (plain, checkpointed)


def test_gradient_checkpointing_keeps_dropout_off_and_the_gradients(tmp_path: Path, smollm2_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from rlkd.algorithms import token_logprobs
    from rlkd.models import enable_gradient_checkpointing

    path = tiny_random_causal_lm(tmp_path / "m", smollm2_path, seed=1)
    models = []
    for checkpointing in (False, True):
        # attention_dropout 0.5: any module switched to training mode by mistake would show
        model = AutoModelForCausalLM.from_pretrained(path, attention_dropout=0.5).eval()
        if checkpointing:
            enable_gradient_checkpointing(model)
            assert any(m.training for m in model.modules())  # the layers really checkpoint
            assert not any(m.training for m in model.modules() if "Attention" in type(m).__name__)
        models.append(model)
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    results = []
    for model in models:
        logp, _, _ = token_logprobs(model, ids, torch.ones_like(ids))
        logp.sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (lp_plain, g_plain), (lp_ckpt, g_ckpt) = results
    torch.testing.assert_close(lp_ckpt, lp_plain)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-4, atol=1e-6)


def test_model_spec_error_is_part_of_the_one_error_hierarchy() -> None:
    import rlkd

    with pytest.raises(rlkd.RlkdError, match="unknown embedded model"):
        resolve_model("embedded:gpt5")
    assert issubclass(ModelSpecError, ValueError)


# ---- checks before loading: a clear ModelSpecError naming the problem, no model loaded


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_model_dirs_are_named_before_loading(tiny_model_path: Path, tmp_path: Path) -> None:
    bad_config = _copy_model(tiny_model_path, tmp_path / "bad_config")
    (bad_config / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ModelSpecError, match="config.json is corrupt"):
        load_causal_lm(str(bad_config))
    truncated = _copy_model(tiny_model_path, tmp_path / "truncated")
    weights = next(truncated.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelSpecError, match="not a complete safetensors file"):
        load_causal_lm(str(truncated))
    no_tokenizer = _copy_model(tiny_model_path, tmp_path / "no_tok")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"):
        (no_tokenizer / name).unlink(missing_ok=True)
    with pytest.raises(ModelSpecError, match="no tokenizer files"):
        load_causal_lm(str(no_tokenizer))


def test_a_non_causal_model_is_refused_before_loading(tmp_path: Path, smollm2_path: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    bert = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(bert)
    AutoTokenizer.from_pretrained(smollm2_path).save_pretrained(bert)
    with pytest.raises(ModelSpecError, match="BertForMaskedLM .*not a causal"):
        load_causal_lm(str(bert))


def test_lora_targets_are_checked_without_loading_weights(tiny_model_path: Path) -> None:
    models.check_lora_targets(str(tiny_model_path), ["q_proj", "v_proj"])
    with pytest.raises(ModelSpecError, match=r"'query_key_value' not in .*linear layers are .*q_proj"):
        models.check_lora_targets(str(tiny_model_path), ["q_proj", "query_key_value"])


def test_model_cache_key_follows_a_local_directorys_files(tmp_path: Path) -> None:
    assert model_cache_key("embedded:smollm2-135m-instruct") == "embedded:smollm2-135m-instruct"
    assert model_cache_key("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    model = tmp_path / "student"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"old weights")
    key = model_cache_key(str(model))
    assert key.startswith(str(model.resolve()) + "@") and model_cache_key(str(model)) == key
    (model / "model.safetensors").write_bytes(b"new weights, saved in place")  # a new fine-tune, same folder
    assert model_cache_key(str(model)) != key
