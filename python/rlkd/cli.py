"""Command-line entry points (console scripts declared in pyproject.toml)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlkd._core import RlkdError


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlkd-train",
        description="Train a student with rewards from a single-token LLM judge (+ verifiable rewards).",
    )
    p.add_argument("config", type=Path, help="TOML config, e.g. configs/math.toml (see docs/config.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (TOML syntax for the value); repeatable")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint")
    return p


def train_main(argv: list[str] | None = None) -> int:
    args = _train_parser().parse_args(argv)
    from rlkd.config import ConfigError, config_to_toml, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        if args.resume is not None:
            _check_resume_config(args.resume, cfg)
    except (ConfigError, FileNotFoundError) as err:
        print(f"rlkd-train: {err}", file=sys.stderr)
        return 2
    print("# resolved config\n" + config_to_toml(cfg))

    from rlkd.train import train

    try:
        run_dir = train(cfg, resume_dir=args.resume)
    except ConfigError as err:  # found once the run starts, e.g. the judge.url server disagrees
        print(f"rlkd-train: {err}", file=sys.stderr)
        return 2
    except RlkdError as err:
        print(f"rlkd-train: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nrlkd-train: interrupted; resume with --resume from the last checkpoint", file=sys.stderr)
        return 130
    print(f"rlkd: run directory  {run_dir}")
    print(f"rlkd: metrics        {run_dir / 'metrics.jsonl'}")
    print(f"rlkd: samples        {run_dir / 'samples.jsonl'}")
    print(f"rlkd: checkpoints    {run_dir / 'checkpoints'}")
    return 0


def _check_resume_config(run_dir: Path, cfg) -> None:
    """A resumed run must use the config it started with; only train.steps may grow."""
    from rlkd.config import ConfigError, config_to_toml, load_config

    saved_path = run_dir / "config.toml"
    if not saved_path.exists():
        raise FileNotFoundError(f"--resume {run_dir}: no config.toml (is this an rlkd run directory?)")
    saved = load_config(saved_path)
    mine, theirs = config_to_toml(cfg).splitlines(), config_to_toml(saved).splitlines()
    section = ""
    differences = []
    for a, b in zip(mine, theirs):
        if a.startswith("["):
            section = a.strip("[]")
        if a != b and not (section == "train" and a.startswith("steps")):
            differences.append(f"  [{section}] {b!r} in the run, {a!r} now")
    if len(mine) != len(theirs) or differences:
        raise ConfigError(f"--resume {run_dir}: the config differs from the run's config.toml:\n" + "\n".join(differences))
