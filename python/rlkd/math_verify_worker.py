"""The math-verify worker process: `python -m rlkd.math_verify_worker` (started by rlkd.fallback).

A module of its own, started with `-m`, so that the worker never re-runs the caller's script:
`verify_batch_with_fallback` works from a script without `if __name__ == "__main__":`, from
stdin and from a notebook. Protocol, one JSON line each way on stdin/stdout: the worker writes
`"ready"` once math-verify is imported, then answers each `[gold, output]` with an int verdict
code. math-verify's own SIGALRM timeouts are off: the parent's kill is the limit.
"""

from __future__ import annotations

import json
import os
import sys

from rlkd._core import Verdict


def main() -> None:
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    import logging

    logging.disable(logging.WARNING)  # math-verify warns once that its timeouts are disabled
    from math_verify import parse  # type: ignore[import-untyped]
    from math_verify import verify as mv_verify  # type: ignore[import-untyped]

    # The first parse builds math-verify's grammars and the first simplification loads much of
    # sympy (seconds each): do both before saying "ready", so that start-up is never counted
    # against a pair's timeout.
    warm_up = (parse("$\\sin^2 x + \\cos^2 x$", parsing_timeout=None), parse("$1$", parsing_timeout=None))
    mv_verify(*warm_up, timeout_seconds=None)
    protocol.write(json.dumps("ready") + "\n")
    for line in sys.stdin:
        code = int(Verdict.Unknown)
        try:
            gold, output = json.loads(line)
            g = parse(gold, parsing_timeout=None)
            p = parse(output, parsing_timeout=None)
            if g and p:
                code = int(Verdict.Equal) if mv_verify(g, p, timeout_seconds=None) else int(Verdict.NotEqual)
        except Exception:  # math-verify failing on an input is an Unknown, not a crash
            code = int(Verdict.Unknown)
        protocol.write(f"{code}\n")


if __name__ == "__main__":
    main()
