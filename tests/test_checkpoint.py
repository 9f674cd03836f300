"""Atomic, resumable checkpoints (rlkd.checkpoint) on tiny real transformers / peft models."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

import rlkd.checkpoint as ckpt_mod
from rlkd.algorithms import ValueHead, build_optimizer, build_scheduler, make_policy_batch, token_logprobs, update_policy
from rlkd.checkpoint import latest_checkpoint, list_checkpoints, load_training_state, restore_policy, save_checkpoint

torch.set_num_threads(1)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return AutoModelForCausalLM.from_config(cfg)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, **{f"w{i}": i for i in range(4, 64)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def batch_for(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, 64, (3,), generator=g).tolist() for _ in range(2)]
    responses = [torch.randint(4, 64, (4,), generator=g).tolist() for _ in range(2)]
    b = make_policy_batch(prompts, responses, 0, seq_advantages=[1.0, -1.0])
    with torch.no_grad():
        lp, _, _ = token_logprobs(model, b.input_ids, b.attention_mask)
    return b.replace(old_logprobs=lp * b.response_mask)


def training_setup(model):
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.01)
    sched = build_scheduler(opt, schedule="cosine", warmup_steps=2, total_steps=8)
    return opt, sched


def save(run_dir, step, model, opt, sched, **kw):
    return save_checkpoint(
        run_dir, step, model=model, tokenizer=tiny_tokenizer(), optimizer=opt, scheduler=sched,
        trainer_state=kw.pop("trainer_state", {"sampler_position": step * 4}), **kw,
    )  # fmt: skip


def test_saved_policy_loads_with_from_pretrained(tmp_path):
    model = tiny_model()
    opt, sched = training_setup(model)
    path = save(tmp_path, 3, model, opt, sched, trainer_state={"sampler_position": 12, "metrics": [{"reward": 0.5}]})
    assert path == tmp_path / "checkpoints" / "step-000003"
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "training_state.pt", "trainer_state.json"} <= files
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert type(loaded) is type(model)
    ref = model.state_dict()
    assert set(loaded.state_dict()) == set(ref)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert AutoTokenizer.from_pretrained(path)("w5 w6")["input_ids"] == [5, 6]
    state = json.loads((path / "trainer_state.json").read_text())
    assert state == {"step": 3, "sampler_position": 12, "metrics": [{"reward": 0.5}]}
    assert not [p for p in path.iterdir() if p.name.endswith(".safetensors") and p.name != "model.safetensors"]


def test_resume_is_bit_identical(tmp_path):
    # Uninterrupted run: 2 steps, checkpoint, then draw random numbers and take a 3rd step.
    model = tiny_model()
    opt, sched = training_setup(model)
    for step in range(2):
        update_policy(model, opt, [batch_for(model, step)], scheduler=sched)
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    random.random(), np.random.rand(), np.random.randn(), torch.rand(1)  # advance every generator
    path = save(tmp_path, 2, model, opt, sched)
    want_rng = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    want_stats = update_policy(model, opt, [batch_for(model, 2)], scheduler=sched)
    want_params = {k: v.clone() for k, v in model.state_dict().items()}

    # Resumed run: a fresh process state (different init, different RNG), restored from disk.
    random.seed(0)
    np.random.seed(0)
    model2 = tiny_model(seed=99)
    opt2, sched2 = training_setup(model2)
    restore_policy(path, model2)
    state = load_training_state(path, optimizer=opt2, scheduler=sched2)
    assert state["step"] == 2 and state["sampler_position"] == 8
    got_rng = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    assert got_rng == want_rng
    assert sched2.last_epoch == 2 and opt2.param_groups[0]["lr"] == want_stats["lr"]
    got_stats = update_policy(model2, opt2, [batch_for(model2, 2)], scheduler=sched2)
    assert got_stats == want_stats
    for k, v in model2.state_dict().items():
        assert torch.equal(v, want_params[k]), k
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_crash_mid_save_leaves_only_complete_checkpoints(tmp_path, monkeypatch):
    model = tiny_model()
    opt, sched = training_setup(model)
    save(tmp_path, 1, model, opt, sched)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    # fails after the policy files are written, before the training state
    monkeypatch.setattr(ckpt_mod.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 2, model, opt, sched)
    monkeypatch.undo()
    # fails inside the model writer itself
    monkeypatch.setattr(type(model), "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 3, model, opt, sched)
    monkeypatch.undo()
    # a non-JSON trainer state fails before anything is written
    with pytest.raises(TypeError):
        save(tmp_path, 4, model, opt, sched, trainer_state={"bad": object()})

    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]
    assert latest_checkpoint(tmp_path) == root / "step-000001"
    assert AutoModelForCausalLM.from_pretrained(root / "step-000001") is not None


def test_stale_temporaries_are_cleaned_and_never_listed(tmp_path):
    model = tiny_model()
    opt, sched = training_setup(model)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-000005-abc").mkdir(parents=True)
    (root / ".tmp-step-000005-abc" / "config.json").write_text("{}")
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    save(tmp_path, 1, model, opt, sched)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]


def test_latest_pointer_and_fallback(tmp_path):
    model = tiny_model()
    opt, sched = training_setup(model)
    root = tmp_path / "checkpoints"
    for step in (5, 10, 7):  # latest follows the most recent save, not the highest number
        save(tmp_path, step, model, opt, sched)
    assert (root / "latest").read_text() == "step-000007\n"
    assert latest_checkpoint(tmp_path) == root / "step-000007"
    (root / "latest").write_text("step-000099\n")  # points at nothing: fall back to the highest step
    assert latest_checkpoint(tmp_path) == root / "step-000010"
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path) == root / "step-000010"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000005", "step-000007", "step-000010"]
    # re-saving an existing step replaces it completely
    path = save(tmp_path, 10, model, opt, sched, trainer_state={"final": True})
    assert json.loads((path / "trainer_state.json").read_text()) == {"final": True, "step": 10}
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000005", "step-000007", "step-000010"]


def test_keep_last_prunes_oldest(tmp_path):
    model = tiny_model()
    opt, sched = training_setup(model)
    for step in (1, 2, 3, 4):
        save(tmp_path, step, model, opt, sched, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000003", "step-000004"]
    save(tmp_path, 5, model, opt, sched)  # keep_last=None keeps everything
    assert len(list_checkpoints(tmp_path)) == 3


def test_value_head_roundtrip(tmp_path):
    model = tiny_model()
    head = ValueHead(32)
    with torch.no_grad():
        head.linear.weight.normal_()
    opt = build_optimizer([model, head], lr=1e-3)
    path = save_checkpoint(tmp_path, 1, model=model, tokenizer=None, optimizer=opt, scheduler=None, value_head=head, trainer_state={})
    assert (path / "value_head" / "value_head.safetensors").is_file()
    head2 = ValueHead(32)
    opt2 = build_optimizer([tiny_model(), head2], lr=1e-3)
    load_training_state(path, optimizer=opt2, value_head=head2)
    assert torch.equal(head2.linear.weight, head.linear.weight)
    with pytest.raises(ValueError, match="scheduler"):
        load_training_state(path, optimizer=opt2, scheduler=build_scheduler(opt2, schedule="constant", warmup_steps=0, total_steps=1))


def test_lora_model_saved_merged_with_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_model()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():  # lora_B starts at 0 (merged == base); make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    live_before = {k: v.clone() for k, v in model.state_dict().items()}
    opt, sched = training_setup(model)
    path = save(tmp_path, 1, model, opt, sched)

    assert (path / "adapter" / "adapter_config.json").is_file()
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(path)
    assert merged.dtype == torch.bfloat16  # the merged weights are for users: bf16, half the disk
    merged = merged.float()
    keys = set(merged.state_dict())
    assert keys == set(tiny_model().state_dict()) and not any("lora" in k or "base_layer" in k for k in keys)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = copy.deepcopy(model).merge_and_unload().to(torch.bfloat16).float()  # the same merge, rounded to bf16
        torch.testing.assert_close(merged(input_ids=ids).logits, want(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        base_bf16 = tiny_model().to(torch.bfloat16).float()
        assert not torch.allclose(merged(input_ids=ids).logits, base_bf16(input_ids=ids).logits, atol=1e-3)
    # the live model is untouched: still a peft model with unmerged adapter weights
    assert isinstance(model, peft.PeftModel)
    for k, v in model.state_dict().items():
        assert torch.equal(v, live_before[k]), k

    # resume: a fresh peft model gets the adapter back bit-exactly
    fresh = peft.get_peft_model(tiny_model(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    restore_policy(path, fresh)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, live_before[k]), k
