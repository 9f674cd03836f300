"""Command-line entry points."""

import sys


def train_main(argv: list[str] | None = None) -> int:
    print("usage: rlkd-train CONFIG [--set section.key=value ...] [--resume RUN_DIR]", file=sys.stderr)
    return 2
