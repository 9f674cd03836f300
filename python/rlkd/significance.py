"""Is a pass@1 change real? Confidence intervals and the paired start-vs-end test.

Both evaluations of a run score the same held-out problems, so the comparison is paired: only
the discordant problems (right before and wrong after, b; wrong before and right after, c) carry
information. McNemar's exact test is the two-sided binomial test of c against b + c with p = 1/2.
Written out here (math.comb) rather than pulling in scipy for one binomial tail.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion correct/n (well-behaved at 0 and n)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b (lost) and c (gained) discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(before: Mapping[str, bool], after: Mapping[str, bool]) -> dict[str, float]:
    """Start-vs-end comparison over the problems both evaluations scored (keyed by problem id).

    Returns pass@1 before/after with Wilson intervals, the difference with a 95% interval (the
    normal approximation for paired proportions), b/c and McNemar's exact p-value."""
    ids = sorted(set(before) & set(after))
    n = len(ids)
    a_before = sum(bool(before[i]) for i in ids)
    a_after = sum(bool(after[i]) for i in ids)
    b = sum(bool(before[i]) and not bool(after[i]) for i in ids)
    c = sum(bool(after[i]) and not bool(before[i]) for i in ids)
    diff = (c - b) / n if n else float("nan")
    se = math.sqrt(max(b + c - (c - b) ** 2 / n, 0.0)) / n if n else float("nan")
    lo_b, hi_b = wilson_interval(a_before, n)
    lo_a, hi_a = wilson_interval(a_after, n)
    return {
        "n": n,
        "pass@1_before": a_before / n if n else float("nan"),
        "pass@1_before_ci95": [lo_b, hi_b],
        "pass@1_after": a_after / n if n else float("nan"),
        "pass@1_after_ci95": [lo_a, hi_a],
        "diff": diff,
        "diff_ci95": [diff - Z95 * se, diff + Z95 * se],
        "lost": b,
        "gained": c,
        "mcnemar_p": mcnemar_exact_p(b, c),
    }


def correct_by_id(rows: Iterable[Mapping]) -> dict[str, bool]:
    """{problem id: correct} from eval rows (`eval/step-N.json` rows)."""
    return {str(r["id"]): r["verdict"] == "Equal" for r in rows}


def format_comparison(cmp: Mapping) -> str:
    """One line for the end of a run."""
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    return (f"pass@1 {pct(cmp['pass@1_before'])}% [{pct(cmp['pass@1_before_ci95'][0])}, {pct(cmp['pass@1_before_ci95'][1])}]"
            f" -> {pct(cmp['pass@1_after'])}% [{pct(cmp['pass@1_after_ci95'][0])}, {pct(cmp['pass@1_after_ci95'][1])}]"
            f" on {cmp['n']} problems: {cmp['diff'] * 100:+.1f} points"
            f" (95% CI {pct(cmp['diff_ci95'][0])} to {pct(cmp['diff_ci95'][1])}),"
            f" {cmp['gained']} gained / {cmp['lost']} lost, McNemar exact p = {cmp['mcnemar_p']:.3g}")
