"""Build tests/data/latex_equivalences.jsonl.gz: MATH-500 answers rewritten in equivalent forms.

Each row is (gold, pred, rewrite, mv_result): `gold` a MATH-500 answer as written, `pred` a model
response ending in `\\boxed{<rewritten answer>}`, `rewrite` the rule that made it, and
`mv_result` math-verify 0.9's verdict (gold wrapped in `$..$` as rlkd's fallback does). Only the
verdicts where math-verify agrees the forms are equal carry a claim: the test checks that
`rlkd.verify` never says NotEqual on those.

Run from the repository root:  .venv/bin/python tests/data/make_latex_equivalences.py PATH/math500/test.jsonl
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from fractions import Fraction
from pathlib import Path

OUT = Path(__file__).with_name("latex_equivalences.jsonl.gz")
FRAC = re.compile(r"\\frac\{(-?\d+)\}\{(\d+)\}")
INT = re.compile(r"^-?\d+$")
DEGREES = re.compile(r"^(-?\d+(?:\.\d+)?)\^\\circ$")


def decimal_of(fr: Fraction) -> str | None:
    """The exact decimal of a fraction with a 2^a 5^b denominator (None otherwise)."""
    d = fr.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return None
    text = f"{float(fr):.12f}".rstrip("0").rstrip(".")
    return text if Fraction(text) == fr else None


def rewrites(a: str) -> list[tuple[str, str]]:
    """(rule, equivalent form) pairs for one answer."""
    out: list[tuple[str, str]] = []
    add = lambda rule, text: out.append((rule, text)) if text != a else None  # noqa: E731
    add("dfrac", a.replace("\\frac", "\\dfrac"))
    add("tfrac", a.replace("\\frac", "\\tfrac"))
    add("no spaces", a.replace(" ", ""))
    add("spaces around operators", re.sub(r"\s*([+\-=,])\s*", r" \1 ", a).strip())
    add("thin spaces", a.replace(",", ",\\,").replace("+", "\\,+\\,"))
    add("left/right", a.replace("(", "\\left(").replace(")", "\\right)").replace("[", "\\left[").replace("]", "\\right]"))
    add("no left/right", a.replace("\\left", "").replace("\\right", ""))
    add("displaystyle", "\\displaystyle " + a)
    add("frac braces dropped", re.sub(r"\\frac\{(\d)\}\{(\d)\}", r"\\frac\1\2", a))
    add("cdot for implicit product", re.sub(r"^(\d+)\s*\\(sqrt|pi)", r"\1 \\cdot \\\2", a))
    add("x =", f"x = {a}")
    m = FRAC.fullmatch(a.strip()) or FRAC.fullmatch(a.strip().lstrip("-"))
    if m:
        fr = Fraction(int(m.group(1)), int(m.group(2))) * (-1 if a.strip().startswith("-") else 1)
        add("slash fraction", f"{fr.numerator}/{fr.denominator}")
        add("scaled fraction", f"\\frac{{{fr.numerator * 2}}}{{{fr.denominator * 2}}}")
        if fr < 0:
            add("sign in numerator", f"\\frac{{{fr.numerator}}}{{{fr.denominator}}}")
        add("negative denominator", f"\\frac{{{-fr.numerator}}}{{-{fr.denominator}}}")
        add("div", f"{fr.numerator} \\div {fr.denominator}")
        add("braced slash", f"{{{fr.numerator}}}/{{{fr.denominator}}}")
        if (fr * 100).denominator == 1:
            add("percent", f"{fr * 100}\\%")
        dec = decimal_of(fr)
        if dec:
            add("decimal", dec)
        else:
            add("decimal, 6 places", f"{float(fr):.6f}")
        if fr.denominator != 1 and abs(fr) > 1:
            whole, rest = divmod(abs(fr), 1)
            sign = "-" if fr < 0 else ""
            add("mixed number", f"{sign}{int(whole)}\\frac{{{rest.numerator}}}{{{rest.denominator}}}")
    if INT.match(a.strip()):
        n = int(a)
        add("trailing .0", f"{n}.0")
        add("trailing .00", f"{n}.00")
        add("over one", f"\\frac{{{n}}}{{1}}")
        add("as a fraction", f"\\frac{{{2 * n}}}{{2}}")
        add("unit in text", f"{n} \\text{{ units}}")
        add("mbox", f"\\mbox{{{n}}}")
        if abs(n) >= 1000:
            add("thousands comma", f"{n:,}")
            add("thousands {,}", f"{n:,}".replace(",", "{,}"))
            add("scientific", f"{n / 10 ** (len(str(abs(n))) - 1):g} \\times 10^{{{len(str(abs(n))) - 1}}}")
        add("sum", f"{n - 1} + 1")
        add("unary plus", f"+{n}")
        add("braced", f"{{{n}}}")
        add("squared unit", f"{n} \\text{{ cm}}^2")
        add("dollars", f"\\${n}")
        if abs(n) >= 1000:
            add("thousands ,\\!", f"{n:,}".replace(",", ",\\!"))
            add("thousands thin space", f"{n:,}".replace(",", "\\,"))
    if re.fullmatch(r"-?\d*\.\d+", a.strip()):
        add("leading zero", "0" + a.strip() if a.strip().startswith(".") else a)
        add("trailing zero", a.strip() + "0")
        fr = Fraction(a.strip())
        add("as a fraction", f"\\frac{{{fr.numerator}}}{{{fr.denominator}}}")
        add("percent", f"{fr * 100}\\%" if (fr * 100).denominator == 1 else f"{float(fr * 100):g}\\%")
    if re.search(r"\d(,\\!|\{,\})\s*\d", a):
        add("digit groups joined", re.sub(r"(,\\!|\{,\})\s*", "", a))
        add("digit groups comma", re.sub(r"(,\\!|\{,\})\s*", ",", a))
    m = DEGREES.match(a.strip())
    if m:
        v = m.group(1)
        for rule, text in (("no degree mark", v), ("degree braces", f"{v}^{{\\circ}}"), ("degree sign", f"{v}°"),
                           ("degrees word", f"{v} \\text{{ degrees}}"), ("degree command", f"{v}\\degree")):
            add(rule, text)
    if a.startswith("\\text{") and a.endswith("}"):
        inner = a[len("\\text{"):-1]
        add("text unwrapped", inner)
        add("textbf", f"\\textbf{{{inner}}}")
        add("mathrm", f"\\mathrm{{{inner}}}")
        add("text padded", f"\\text{{ {inner} }}")
    if a.startswith("\\$"):
        add("dollar sign dropped", a[2:])
        add("dollar cents", a + ".00" if INT.match(a[2:]) else a)
    if "," in a and not any(c in a for c in "()[]\\{}"):  # a bare list: a set, any order
        items = [s.strip() for s in a.split(",")]
        add("list reversed", ", ".join(reversed(items)))
        add("set braces", "\\{" + ", ".join(items) + "\\}")
        add("set braces reversed", "\\{" + ", ".join(reversed(items)) + "\\}")
        add("and", ", ".join(items[:-1]) + " \\text{ and } " + items[-1])
        add("or-assignments", " \\text{ or } ".join(f"x = {i}" for i in items))
        add("assignments", ", ".join(f"x = {i}" for i in items))
    if re.fullmatch(r"\\begin\{pmatrix\}.*\\end\{pmatrix\}", a.strip(), re.S):
        add("bmatrix", a.replace("pmatrix", "bmatrix"))
        add("matrix fractions", re.sub(r"(-?\d+)/(\d+)", r"\\frac{\1}{\2}", a))
    if re.fullmatch(r"[\(\[].*[\)\]]", a.strip()) and "\\cup" not in a:
        add("interval/tuple spacing", re.sub(r"\s*,\s*", ", ", a))
        add("plus infinity", a.replace("\\infty", "+\\infty") if "-\\infty" not in a else a)
    if "\\cup" in a:
        parts = [p.strip() for p in a.split("\\cup")]
        add("union reversed", " \\cup ".join(reversed(parts)))
    if re.fullmatch(r"-?\d+\s*[+-]\s*\d*i", a.strip()):  # a + bi
        m2 = re.fullmatch(r"(-?\d+)\s*([+-])\s*(\d*)i", a.strip())
        if m2:
            add("imaginary first", f"{m2.group(2) if m2.group(2) == '-' else ''}{m2.group(3)}i + {m2.group(1)}".replace("+ -", "- "))
    top = re.fullmatch(r"([^{}()+]+?)\s*\+\s*([^{}()+]+)", a.strip())
    if top:
        add("sum reordered", f"{top.group(2)} + {top.group(1)}")
    if "\\sqrt" in a:
        add("sqrt without braces", re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt \1", a))
    if "\\pi" in a:
        add("pi spaced", a.replace("\\pi", " \\pi").replace("  ", " ").strip())
    return out


def responses(form: str) -> list[tuple[str, str]]:
    return [("boxed", f"So the final answer is $\\boxed{{{form}}}$."),
            ("inline", f"The answer is ${form}$"),
            ("paren math", f"Therefore the answer is \\({form}\\)."),
            ("final answer", f"Final Answer: The final answer is ${form}$. I hope it is correct."),
            ("display boxed", f"We get\n\\[\n\\boxed{{{form}}}\n\\]")]


def as_math_verify_gold(gold: str) -> str:
    if any(m in gold for m in ("$", "\\(", "\\[", "\\boxed", "\\fbox", "####")):
        return gold
    return f"${gold.strip()}$"


def main(math500: Path) -> None:
    import logging

    from math_verify import parse, verify  # type: ignore[import-untyped]

    logging.disable(logging.WARNING)
    answers = sorted({json.loads(line)["answer"] for line in math500.open()})
    rows = []
    for gold in answers:
        seen = set()
        for rule, form in rewrites(gold):
            for how, pred in responses(form):
                if (form, how) in seen:
                    continue
                seen.add((form, how))
                try:
                    mv = bool(verify(parse(as_math_verify_gold(gold)), parse(pred)))
                except Exception:
                    mv = False
                rows.append({"gold": gold, "pred": pred, "rewrite": f"{rule} ({how})", "mv_result": mv})
    with gzip.open(OUT, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    n_eq = sum(r["mv_result"] for r in rows)
    print(f"{len(rows)} pairs from {len(answers)} answers; math-verify Equal on {n_eq}; wrote {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
