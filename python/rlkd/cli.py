"""Command-line entry points (console scripts declared in pyproject.toml)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rlkd.cli_errors import run_cli


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
    return run_cli("rlkd-train", lambda: _train(args),
                   interrupted="interrupted; resume with --resume from the last checkpoint")


def _train(args: argparse.Namespace) -> int:
    from rlkd.config import config_to_toml, load_config
    from rlkd.preflight import check_run_start

    cfg = load_config(args.config, args.overrides)
    if args.resume is not None:
        _check_resume_config(args.resume, cfg)
    check_run_start(cfg, args.resume)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the job
    if main_rank:
        print("# resolved config\n" + config_to_toml(cfg))

    from rlkd.train import train

    run_dir = train(cfg, resume_dir=args.resume)
    if main_rank:
        print(f"rlkd: run directory  {run_dir}")
        print(f"rlkd: metrics        {run_dir / 'metrics.jsonl'}")
        print(f"rlkd: samples        {run_dir / 'samples.jsonl'}")
        print(f"rlkd: checkpoints    {run_dir / 'checkpoints'}")
    return 0


# (section, key) pairs a resume may change: train.steps lets a finished run go on, the others
# let it go on with another time budget or evaluation/checkpoint cadence.
RESUME_MAY_CHANGE = {("train", "steps"), ("train", "time_budget_min"), ("train", "eval_every"),
                     ("train", "checkpoint_every"), ("train", "keep_checkpoints")}


def _check_resume_config(run_dir: Path, cfg) -> None:
    """A resumed run must use the config it started with, except for the keys that say how long it
    runs and how often it evaluates or saves (RESUME_MAY_CHANGE): they do not change what a step learns."""
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
        if a != b and (section, a.split(" = ")[0]) not in RESUME_MAY_CHANGE:
            differences.append(f"  [{section}] {b!r} in the run, {a!r} now")
    if len(mine) != len(theirs) or differences:
        raise ConfigError(f"--resume {run_dir}: the config differs from the run's config.toml:\n" + "\n".join(differences))


def main(argv: list[str] | None = None) -> int:
    """`python -m rlkd.cli train CONFIG ...`: the form `torchrun -m` launches (docs/distributed.md)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "train":
        print("usage: python -m rlkd.cli train CONFIG [--set k=v] [--resume RUN_DIR]  (= rlkd-train)", file=sys.stderr)
        return 2
    return train_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
