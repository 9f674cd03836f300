"""Atomic, resumable checkpoints that other tools can load.

Layout of ``run_dir/checkpoints/``::

    step-000123/                   one complete checkpoint (never partially written)
        config.json, generation_config.json, model*.safetensors[, index]   the policy, HF format
        tokenizer files, chat template                                     (AutoModelForCausalLM /
                                                                            AutoTokenizer / vLLM load it)
        adapter/                   LoRA only: the peft adapter (adapter_config.json + safetensors);
                                   the HF files above are then the MERGED weights
        value_head/value_head.safetensors   PPO only (kept out of the top level: vLLM loads every
                                   top-level *.safetensors as model weights)
        training_state.pt          optimizer, scheduler, RNG states (python, numpy, torch CPU/CUDA)
        trainer_state.json         the loop's dict (step, sampler position, metrics...) + "step"
    latest                         text file: the name of the newest checkpoint ("step-000123")

A checkpoint is written into a hidden temporary directory (``.tmp-step-000123-*``) in the same
parent, fsync'ed, and renamed into place with ``os.replace``; ``latest`` is replaced the same way.
A crash at any point leaves either the previous state or the complete new checkpoint, plus at
worst a hidden ``.tmp-*`` directory that the next save removes. Directory names matching
``step-NNNNNN`` always denote complete checkpoints.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "checkpoint_name",
    "latest_checkpoint",
    "list_checkpoints",
    "load_training_state",
    "restore_policy",
    "restore_value_head",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINING_STATE = "training_state.pt"
TRAINER_STATE = "trainer_state.json"
ADAPTER_DIR = "adapter"
VALUE_HEAD_DIR = "value_head"
VALUE_HEAD_FILE = "value_head.safetensors"
_NAME = re.compile(r"^step-(\d{6,})$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


def checkpoint_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"step-{step:06d}"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under ``run_dir/checkpoints``, oldest (lowest step) first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint named by ``checkpoints/latest``, or, when that file is missing or points at
    nothing, the highest-step checkpoint; None when there is none."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        if _NAME.match(name) and (root / name).is_dir():
            return root / name
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (and ``path`` itself)."""
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + "-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU and CUDA) in a form `torch.save` keeps."""
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy arrays are not allowed by torch.load(weights_only=True): store the key as a tensor
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _save_policy(model: Any, tokenizer: Any, out: Path) -> None:
    if _is_peft(model):
        model.save_pretrained(out / ADAPTER_DIR, safe_serialization=True)
        # Merge on a copy: merging in place and unmerging is not bit-exact in bf16, and the live
        # model must stay exactly as it is for the run to continue (and resume) identically.
        # The merged weights are for users (transformers, vLLM, rlkd-eval) and are saved in bf16,
        # half the disk of fp32; resume restores the exact fp32 adapter from adapter/.
        merged = copy.deepcopy(model).merge_and_unload().to(torch.bfloat16)
        merged.save_pretrained(out, safe_serialization=True)
        del merged
    else:
        model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    model: nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    value_head: nn.Module | None = None,
    trainer_state: dict[str, Any],
    rng: dict[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-{step:06d}`` atomically, point ``latest`` at it, prune.

    ``model`` is a transformers causal LM or a peft model wrapping one (then the merged weights
    are the HF files and the adapter goes to ``adapter/``). ``trainer_state`` must be
    JSON-serialisable; ``"step"`` is set to ``step``. ``keep_last=N`` removes all but the N
    highest-step checkpoints afterwards (None or 0 keeps everything). ``rng`` is the RNG state to
    save (from `rng_state`, taken when ``step`` ended); None takes it now. Saving a step that
    already exists replaces it. Returns the checkpoint directory.
    """
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = root / name
    _remove_stale(root)
    state = dict(trainer_state)
    state["step"] = int(step)
    state_json = json.dumps(state, indent=2, sort_keys=True)  # fail early, before writing anything

    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=root))
    try:
        _save_policy(model, tokenizer, tmp)
        if value_head is not None:
            (tmp / VALUE_HEAD_DIR).mkdir()
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()}
            meta = {"format": "rlkd.ValueHead", "hidden_size": str(getattr(value_head, "hidden_size", ""))}
            save_file(tensors, str(tmp / VALUE_HEAD_DIR / VALUE_HEAD_FILE), metadata=meta)
        torch.save(
            {
                "format": 1,
                "step": int(step),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng if rng is not None else rng_state(),
            },
            tmp / TRAINING_STATE,
        )
        (tmp / TRAINER_STATE).write_text(state_json)
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step: move the old one aside, never merge into it
            trash = Path(tempfile.mkdtemp(prefix=f"{_TRASH_PREFIX}{name}-", dir=root))
            os.replace(final, trash / name)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    _write_text_atomic(root / LATEST, name + "\n")
    if keep_last:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old.name != name:
                _delete_dir(old)
    _remove_stale(root)
    return final


def _delete_dir(path: Path) -> None:
    """Rename out of the checkpoint namespace first, so a crash mid-delete leaves no partial
    directory named like a checkpoint."""
    trash = Path(tempfile.mkdtemp(prefix=f"{_TRASH_PREFIX}{path.name}-", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale(root: Path) -> None:
    """Remove leftovers of interrupted saves/deletes (hidden ``.tmp-*`` / ``.trash-*`` entries)."""
    for p in root.iterdir():
        if p.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_training_state(
    ckpt_dir: str | os.PathLike[str],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    value_head: nn.Module | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore optimizer, scheduler, value head and (by default) RNG states from a checkpoint;
    return its trainer_state dict. Restore the policy weights first (`restore_policy`, or load
    the model from ``ckpt_dir``) and build ``optimizer``/``scheduler`` over it exactly as the
    original run did (same parameter order), then call this."""
    ckpt = Path(ckpt_dir)
    blob = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None:
        if blob["scheduler"] is None:
            raise ValueError(f"{ckpt}: no scheduler state saved")
        scheduler.load_state_dict(blob["scheduler"])
    if value_head is not None:
        restore_value_head(ckpt, value_head)
    if restore_rng:
        set_rng_state(blob["rng"])
    return json.loads((ckpt / TRAINER_STATE).read_text())


def restore_value_head(ckpt_dir: str | os.PathLike[str], value_head: nn.Module) -> nn.Module:
    """Load PPO's value head saved in ``ckpt_dir`` into ``value_head`` in place."""
    path = Path(ckpt_dir) / VALUE_HEAD_DIR / VALUE_HEAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt_dir}: no value head saved ({path})")
    from safetensors.torch import load_file

    device = next(value_head.parameters()).device
    value_head.load_state_dict(load_file(str(path), device=str(device)))
    return value_head


def restore_policy(ckpt_dir: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load the policy weights saved in ``ckpt_dir`` into ``model`` in place, bit-exactly.

    For a peft model, the adapter weights from ``adapter/`` (the base stays as loaded); for a
    plain model, the HF weights (read through ``from_pretrained`` on CPU in the model's dtype, so
    any key conversion transformers applies on load is honoured). Returns ``model``.
    """
    ckpt = Path(ckpt_dir)
    if _is_peft(model):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        adapter = ckpt / ADAPTER_DIR
        if not adapter.is_dir():
            raise FileNotFoundError(f"{ckpt}: no LoRA adapter saved ({adapter})")
        result = set_peft_model_state_dict(model, load_peft_weights(str(adapter), device="cpu"))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{adapter}: unexpected adapter keys {unexpected[:5]}")
        return model
    from transformers import AutoModelForCausalLM

    dtype = next(model.parameters()).dtype
    loaded = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, device_map="cpu")
    with torch.no_grad():
        model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    return model
