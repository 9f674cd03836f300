"""A seeded generator of GSM8K-style multi-step arithmetic word problems with exact answers.

    problems = generate_problems_with_solutions(100, seed=1, min_steps=2, max_steps=4)
    problems[0].question, problems[0].solution, problems[0].answer   # "... #### 42", "42"

- Six families of stories: shopping (prices, coupons, change), rates (reading, travel, baking,
  saving toward a target), ages (chains of relations), sharing (equal split at the end), time
  (minutes and hours, repeated over days) and collections (gains, losses, doubling, halves).
- `steps` is the exact number of arithmetic operations in the solution: every operation is one
  GSM8K calculator annotation `<<a*b=c>>c`, so the solution has exactly `steps` of them and the
  final answer is the result of the last one. Intermediate values stay small (≤ 2000) and every
  value is a non-negative integer (divisions are exact).
- The worked solution is in GSM8K format (`... #### 42`), so synthetic data goes through the
  same code path as GSM8K files.
- Deterministic for a seed (Python's `random.Random`, whose integer and choice methods are
  stable across versions); questions within one call are unique, and `exclude` keeps another
  set (the training questions) out, which is how the held-out set stays disjoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from rlkd.data import Example

__all__ = ["SyntheticProblem", "generate_problems", "generate_problems_with_solutions", "FAMILIES",
           "MIN_STEPS", "MAX_STEPS"]

MIN_STEPS, MAX_STEPS = 1, 5
_MAX_VALUE = 2000


@dataclass(frozen=True)
class SyntheticProblem:
    id: str
    question: str
    solution: str  # worked solution ending in "#### <answer>"
    answer: str  # the bare integer, e.g. "42"
    steps: int  # arithmetic operations in the solution (= calculator annotations)
    family: str

    def to_example(self) -> Example:
        return Example(id=self.id, question=self.question, answer=self.answer, solution=self.solution)


class _Retry(Exception):
    """The random draw broke a constraint; draw again."""


_NAMES = [("Maya", "she"), ("Liam", "he"), ("Sofia", "she"), ("Noah", "he"), ("Ava", "she"), ("Ethan", "he"),
          ("Zoe", "she"), ("Lucas", "he"), ("Mia", "she"), ("Omar", "he"), ("Chloe", "she"), ("Mateo", "he"),
          ("Priya", "she"), ("Jamal", "he"), ("Hana", "she"), ("Leo", "he"), ("Nora", "she"), ("Ravi", "he"),
          ("Elena", "she"), ("Kenji", "he"), ("Amara", "she"), ("Diego", "he"), ("Ingrid", "she"), ("Tom", "he"),
          ("Fatima", "she"), ("Sam", "he"), ("Lucy", "she"), ("Ben", "he"), ("Aisha", "she"), ("Max", "he")]


class _Work:
    """Accumulates solution lines; every arithmetic operation is one calculator annotation."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.steps = 0

    def op(self, a: int, sym: str, b: int) -> tuple[int, str]:
        if sym == "+":
            c = a + b
        elif sym == "-":
            c = a - b
        elif sym == "*":
            c = a * b
        elif sym == "/":
            if b == 0 or a % b:
                raise _Retry
            c = a // b
        else:  # pragma: no cover
            raise ValueError(sym)
        if c < 0 or c > _MAX_VALUE:
            raise _Retry
        self.steps += 1
        return c, f"{a}{sym}{b} = <<{a}{sym}{b}={c}>>{c}"

    def line(self, text: str) -> None:
        self.lines.append(text)


def _person(rng: random.Random, avoid: Iterable[str] = ()) -> tuple[str, str, str, str]:
    """(name, subject, object, possessive) pronouns."""
    avoid = set(avoid)
    name, subj = rng.choice([p for p in _NAMES if p[0] not in avoid])
    return (name, subj, "her" if subj == "she" else "him", "her" if subj == "she" else "his")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# ------------------------------------------------------------------------------------------
# Families. Each takes (rng, steps) and returns (question sentences, work, answer).
# ------------------------------------------------------------------------------------------

_ITEMS = [("notebook", "notebooks", 2, 6), ("pen", "pens", 1, 3), ("apple", "apples", 1, 2),
          ("toy car", "toy cars", 3, 9), ("book", "books", 5, 15), ("shirt", "shirts", 8, 20),
          ("cupcake", "cupcakes", 2, 4), ("pack of stickers", "packs of stickers", 1, 5),
          ("flower pot", "flower pots", 3, 8), ("sandwich", "sandwiches", 4, 7), ("ticket", "tickets", 5, 12)]
_SINGLE = [("a hat", 6, 15), ("a backpack", 15, 30), ("a board game", 10, 25), ("a scarf", 5, 12),
           ("a water bottle", 3, 9), ("a lamp", 12, 28)]


def _shopping(rng: random.Random, steps: int) -> tuple[list[str], _Work, int]:
    name, she, _her, _his = _person(rng)
    w = _Work()
    final_change = steps >= 2 and rng.random() < 0.5
    budget = steps - (1 if final_change else 0)
    items = rng.sample(_ITEMS, 3)
    q: list[str] = []
    sing, plur, lo, hi = items.pop()
    a, p = rng.randint(2, 9), rng.randint(lo, hi)
    total, expr = w.op(a, "*", p)
    q.append(f"{name} buys {a} {plur} for ${p} each.")
    w.line(f"The {plur} cost {expr} dollars.")
    budget -= 1
    used_coupon = False
    singles = rng.sample(_SINGLE, 3)
    while budget > 0:
        r = rng.random()
        if budget >= 2 and items and r < 0.5:
            sing, plur, lo, hi = items.pop()
            a, p = rng.randint(2, 9), rng.randint(lo, hi)
            cost, expr = w.op(a, "*", p)
            w.line(f"The {plur} cost {expr} dollars.")
            total, expr = w.op(total, "+", cost)
            w.line(f"So far {she} spends {expr} dollars.")
            q.append(f"{_cap(she)} also buys {a} {plur} for ${p} each.")
            budget -= 2
        elif not used_coupon and total > 12 and r < 0.75:
            d = rng.randint(2, min(10, total - 1))
            total, expr = w.op(total, "-", d)
            q.append(f"At the register {she} uses a coupon for ${d} off.")
            w.line(f"With the coupon {she} pays {expr} dollars.")
            used_coupon = True
            budget -= 1
        elif singles:
            what, lo, hi = singles.pop()
            p = rng.randint(lo, hi)
            total, expr = w.op(total, "+", p)
            q.append(f"{_cap(she)} also buys {what} for ${p}.")
            w.line(f"Adding {what} makes {expr} dollars.")
            budget -= 1
        else:
            raise _Retry
    if final_change:
        bill = next((b for b in (10, 20, 50, 100, 200, 500) if b > total), None)
        if bill is None:
            raise _Retry
        change, expr = w.op(bill, "-", total)
        q.append(f"{_cap(she)} pays with a ${bill} bill. How much change does {she} get, in dollars?")
        w.line(f"{_cap(she)} gets {expr} dollars in change.")
        return q, w, change
    q.append(f"How many dollars does {name} spend in total?")
    return q, w, total


_RATE_THEMES: list[dict[str, Any]] = [
    # (verb phrase with {r}, {t}; unit of t; quantity noun; target sentence with {n}; question)
    dict(first="{name} reads {r} pages a day for {t} days.", more="Then {she} reads {r} pages a day for {t} days.",
         extra="On the last day {she} reads {x} more pages.", noun="pages",
         target="The book has {n} pages. How many pages does {she} still have to read?",
         total_q="How many pages does {she} read in all?", rate=(5, 30), time=(2, 9)),
    dict(first="{name} drives at {r} miles per hour for {t} hours.",
         more="Then {she} drives at {r} miles per hour for {t} hours.",
         extra="After that {she} drives {x} more miles in town.", noun="miles",
         target="The whole trip is {n} miles long. How many miles are left?",
         total_q="How many miles does {she} drive altogether?", rate=(30, 65), time=(1, 4)),
    dict(first="{name} bakes {r} cookies an hour for {t} hours.", more="Then {she} bakes {r} cookies an hour for {t} hours.",
         extra="{Her} friend brings {x} more cookies.", noun="cookies",
         target="The school fair needs {n} cookies. How many more cookies are needed?",
         total_q="How many cookies are there in total?", rate=(6, 24), time=(2, 6)),
    dict(first="{name} saves ${r} a week for {t} weeks.", more="Then {she} saves ${r} a week for {t} weeks.",
         extra="{Her} grandmother gives {her} ${x}.", noun="dollars",
         target="{_She} wants a bike that costs ${n}. How many more dollars does {she} need?",
         total_q="How many dollars does {she} have saved?", rate=(4, 25), time=(3, 10)),
]


def _rates(rng: random.Random, steps: int) -> tuple[list[str], _Work, int]:
    name, she, her, his = _person(rng)
    th = rng.choice(_RATE_THEMES)
    fmt = dict(name=name, she=she, her=her, Her=_cap(his), _She=_cap(she))
    w = _Work()
    final_target = steps >= 2 and rng.random() < 0.5
    budget = steps - (1 if final_target else 0)
    r, t = rng.randint(*th["rate"]), rng.randint(*th["time"])
    total, expr = w.op(r, "*", t)
    q = [th["first"].format(r=r, t=t, **fmt)]
    w.line(f"First: {expr} {th['noun']}.")
    budget -= 1
    extra_used = False
    while budget > 0:
        if budget >= 2 and (extra_used or rng.random() < 0.6):
            r, t = rng.randint(*th["rate"]), rng.randint(*th["time"])
            part, expr = w.op(r, "*", t)
            w.line(f"Next: {expr} {th['noun']}.")
            total, expr = w.op(total, "+", part)
            w.line(f"Together: {expr} {th['noun']}.")
            q.append(th["more"].format(r=r, t=t, **fmt))
            budget -= 2
        elif not extra_used:
            x = rng.randint(3, 40)
            total, expr = w.op(total, "+", x)
            w.line(f"With the extra: {expr} {th['noun']}.")
            q.append(th["extra"].format(x=x, **fmt))
            extra_used = True
            budget -= 1
        else:
            raise _Retry
    if final_target:
        n = total + rng.randint(1, max(2, total // 2))
        left, expr = w.op(n, "-", total)
        q.append(th["target"].format(n=n, **fmt))
        w.line(f"Remaining: {expr} {th['noun']}.")
        return q, w, left
    q.append(th["total_q"].format(**fmt))
    return q, w, total


def _ages(rng: random.Random, steps: int) -> tuple[list[str], _Work, int]:
    final = rng.choice(["none", "future", "past", "sum"]) if steps >= 2 else "none"
    relations = steps - (0 if final == "none" else 1)
    people = [_person(rng)]
    for _ in range(relations):
        people.append(_person(rng, avoid=[p[0] for p in people]))
    first = people[0][0]
    age = rng.randint(4, 14)
    w = _Work()
    q = [f"{first} is {age} years old."]
    ages = [age]
    for prev, cur in zip(people, people[1:]):
        kind = rng.choice(["older", "younger", "times", "half"])
        if kind == "older":
            d = rng.randint(2, 25)
            age, expr = w.op(age, "+", d)
            q.append(f"{cur[0]} is {d} years older than {prev[0]}.")
        elif kind == "younger":
            if age <= 3:
                raise _Retry
            d = rng.randint(1, min(age - 2, 20))
            age, expr = w.op(age, "-", d)
            q.append(f"{cur[0]} is {d} years younger than {prev[0]}.")
        elif kind == "times":
            k = rng.randint(2, 4)
            age, expr = w.op(age, "*", k)
            q.append(f"{cur[0]} is {k} times as old as {prev[0]}.")
        else:
            if age % 2 or age < 4:
                raise _Retry
            age, expr = w.op(age, "/", 2)
            q.append(f"{cur[0]} is half as old as {prev[0]}.")
        if age > 95:
            raise _Retry
        ages.append(age)
        w.line(f"{cur[0]} is {expr} years old.")
    last = people[-1][0]
    if final == "future":
        y = rng.randint(2, 15)
        ans, expr = w.op(age, "+", y)
        q.append(f"How old will {last} be in {y} years?")
        w.line(f"In {y} years {last} will be {expr} years old.")
    elif final == "past":
        if age <= 2:
            raise _Retry
        y = rng.randint(1, min(age - 1, 10))
        ans, expr = w.op(age, "-", y)
        q.append(f"How old was {last} {y} years ago?")
        w.line(f"{y} years ago {last} was {expr} years old.")
    elif final == "sum":
        ans, expr = w.op(ages[0], "+", age)
        q.append(f"What is the sum of {first}'s and {last}'s ages?")
        w.line(f"Together they are {expr} years old.")
    else:
        ans = age
        q.append(f"How old is {last}?")
    return q, w, ans


_THINGS = ["marbles", "stickers", "stamps", "trading cards", "seashells", "beads", "crayons", "candies", "coins"]


_GAIN = ["{She} finds {x} more {thing}.", "{His} aunt gives {her} {x} {thing}.", "{She} wins {x} {thing} at a fair.",
         "{She} gets {x} more {thing} from a friend.", "{She} buys {x} more {thing}."]
_LOSS = ["{She} gives {y} {thing} to a neighbour.", "{She} loses {y} {thing}.",
         "{She} uses {y} {thing} for a craft project.", "{She} trades away {y} of {his} {thing}.",
         "{She} gives {y} {thing} to {his} cousin."]


def _sharing(rng: random.Random, steps: int) -> tuple[list[str], _Work, int]:
    name, she, her, his = _person(rng)
    thing = rng.choice(_THINGS)
    w = _Work()
    budget = steps - 1  # the final equal split
    if budget == 0:
        k = rng.randint(2, 8)
        total = k * rng.randint(2, 15)
        q = [f"{name} has {total} {thing}."]
    else:
        total = rng.randint(5, 60)
        q = [f"{name} has {total} {thing}."]
        last, draws = "", 0
        while budget > 0:
            draws += 1
            if draws > 100:
                raise _Retry
            r = rng.random()
            kind = "bags" if budget >= 2 and r < 0.4 else ("add" if r < 0.7 or total < 6 else "sub")
            if kind == last:
                continue
            last = kind
            if kind == "bags":
                b, c = rng.randint(2, 6), rng.randint(3, 12)
                got, expr = w.op(b, "*", c)
                w.line(f"The bags hold {expr} {thing}.")
                total, expr = w.op(total, "+", got)
                w.line(f"Now {she} has {expr} {thing}.")
                q.append(f"{_cap(she)} buys {b} bags with {c} {thing} in each bag.")
                budget -= 2
            elif kind == "add":
                x = rng.randint(2, 30)
                total, expr = w.op(total, "+", x)
                w.line(f"Then {she} has {expr} {thing}.")
                q.append(rng.choice(_GAIN).format(x=x, thing=thing, She=_cap(she), her=her, His=_cap(his)))
                budget -= 1
            else:
                y = rng.randint(1, total - 2)
                total, expr = w.op(total, "-", y)
                w.line(f"Then {she} has {expr} {thing}.")
                q.append(rng.choice(_LOSS).format(y=y, thing=thing, She=_cap(she), his=his))
                budget -= 1
    ks = [k for k in range(2, 9) if total % k == 0]
    if not ks:
        raise _Retry
    k = rng.choice(ks)
    share, expr = w.op(total, "/", k)
    if rng.random() < 0.5:
        q.append(f"{_cap(she)} shares all the {thing} equally among {k} friends. How many {thing} does each friend get?")
    else:
        q.append(f"{_cap(she)} puts all the {thing} into {k} boxes with the same number in each. "
                 f"How many {thing} are in each box?")
    w.line(f"Each gets {expr} {thing}.")
    return q, w, share


_ACTIVITIES = ["piano practice", "homework", "reading", "soccer training", "drawing", "chess", "gardening", "swimming"]


def _time(rng: random.Random, steps: int) -> tuple[list[str], _Work, int]:
    name, she, _her, his = _person(rng)
    acts = rng.sample(_ACTIVITIES, 4)
    w = _Work()
    final = rng.choice(["days", "hours", "none"]) if steps >= 2 else "none"
    budget = steps - (0 if final == "none" else 1)
    q: list[str] = []
    first = acts.pop()
    if rng.random() < 0.5:
        h = rng.randint(1, 3)
        minutes, expr = w.op(h, "*", 60)
        q.append(f"{name} spends {h} hour{'s' if h > 1 else ''} on {first}.")
        w.line(f"{_cap(first)} takes {expr} minutes.")
        budget -= 1
    else:
        minutes = rng.choice([15, 20, 25, 30, 40, 45, 50])
        q.append(f"{name} spends {minutes} minutes on {first}.")
    first_minutes = total = minutes
    while budget > 0:
        act = acts.pop() if acts else None
        if act is None:
            raise _Retry
        r = rng.random()
        if budget >= 2 and r < 0.35:
            k = rng.randint(2, 3)
            m, expr = w.op(first_minutes, "*", k)
            w.line(f"{_cap(act)} takes {expr} minutes.")
            total, expr = w.op(total, "+", m)
            w.line(f"So far: {expr} minutes.")
            q.append(f"{_cap(she)} spends {'twice' if k == 2 else 'three times'} as long on {act} as on {first}.")
            budget -= 2
        elif budget >= 2 and r < 0.6 and first_minutes > 10:
            d = rng.choice([5, 10, 15]) if first_minutes > 15 else 5
            m, expr = w.op(first_minutes, "-", d)
            w.line(f"{_cap(act)} takes {expr} minutes.")
            total, expr = w.op(total, "+", m)
            w.line(f"So far: {expr} minutes.")
            q.append(f"{_cap(she)} spends {d} minutes less on {act} than on {first}.")
            budget -= 2
        else:
            m = rng.choice([10, 15, 20, 25, 30, 35, 40, 45])
            total, expr = w.op(total, "+", m)
            w.line(f"Adding {act}: {expr} minutes.")
            q.append(f"{_cap(she)} also spends {m} minutes on {act}.")
            budget -= 1
    if final == "days":
        d = rng.randint(2, 7)
        ans, expr = w.op(total, "*", d)
        q.append(f"{_cap(she)} follows this schedule for {d} days. How many minutes does {she} spend in all?")
        w.line(f"Over {d} days: {expr} minutes.")
    elif final == "hours":
        if total % 60:
            raise _Retry
        ans, expr = w.op(total, "/", 60)
        q.append(f"How many hours does {name} spend on these activities?")
        w.line(f"That is {expr} hours.")
    else:
        ans = total
        q.append(f"How many minutes does {name} spend on these activities in total?")
    return q, w, ans


def _collection(rng: random.Random, steps: int) -> tuple[list[str], _Work, int]:
    name, she, her, his = _person(rng)
    thing = rng.choice(_THINGS)
    total = rng.randint(8, 60)
    w = _Work()
    q = [f"{name} has {total} {thing}."]
    budget = steps
    doubled = False
    last, draws = "", 0
    while budget > 0:
        draws += 1
        if draws > 100:
            raise _Retry
        r = rng.random()
        if budget >= 2 and r < 0.25:
            kind = "packs"
        elif r < 0.45:
            kind = "add"
        elif r < 0.65 and total > 6:
            kind = "sub"
        elif r < 0.8 and not doubled and total <= 300:
            kind = "double"
        elif total % 2 == 0 and total >= 4:
            kind = "half"
        else:
            continue
        if kind == last:
            continue
        last = kind
        if kind == "packs":
            b, c = rng.randint(2, 5), rng.randint(4, 12)
            got, expr = w.op(b, "*", c)
            w.line(f"The packs hold {expr} {thing}.")
            total, expr = w.op(total, "+", got)
            w.line(f"Then {she} has {expr} {thing}.")
            q.append(f"{_cap(she)} buys {b} packs of {c} {thing}.")
            budget -= 2
        elif kind == "add":
            x = rng.randint(3, 25)
            total, expr = w.op(total, "+", x)
            w.line(f"Then {she} has {expr} {thing}.")
            q.append(rng.choice(_GAIN).format(x=x, thing=thing, She=_cap(she), her=her, His=_cap(his)))
            budget -= 1
        elif kind == "sub":
            y = rng.randint(1, total // 2)
            total, expr = w.op(total, "-", y)
            w.line(f"Then {she} has {expr} {thing}.")
            q.append(rng.choice(_LOSS).format(y=y, thing=thing, She=_cap(she), his=his))
            budget -= 1
        elif kind == "double":
            total, expr = w.op(total, "*", 2)
            w.line(f"Then {she} has {expr} {thing}.")
            q.append(rng.choice([f"{_cap(she)} doubles {his} collection.",
                                 f"{_cap(she)} gets as many {thing} again as {she} already has."]))
            doubled = True
            budget -= 1
        else:
            total, expr = w.op(total, "/", 2)
            w.line(f"Then {she} keeps {expr} {thing}.")
            q.append(f"{_cap(she)} gives half of {his} {thing} to {his} brother.")
            budget -= 1
    q.append(f"How many {thing} does {name} have now?")
    return q, w, total


FAMILIES: dict[str, Callable[[random.Random, int], tuple[list[str], _Work, int]]] = {
    "shopping": _shopping, "rates": _rates, "ages": _ages, "sharing": _sharing, "time": _time,
    "collection": _collection,
}


def _one(rng: random.Random, steps: int, family: str) -> tuple[str, str, int]:
    for _ in range(1000):
        try:
            q, w, ans = FAMILIES[family](rng, steps)
        except _Retry:
            continue
        if w.steps != steps:  # a family could not fill the budget exactly: draw again
            continue
        solution = "\n".join(w.lines + [f"#### {ans}"])
        return " ".join(q), solution, ans
    raise RuntimeError(f"synthetic: family {family!r} failed to make a {steps}-step problem")  # pragma: no cover


def generate_problems_with_solutions(
    n: int,
    *,
    seed: int,
    min_steps: int = 2,
    max_steps: int = 4,
    families: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> list[SyntheticProblem]:
    """`n` distinct problems, each with min_steps..max_steps operations (uniform), deterministic in
    `seed`. Questions in `exclude` are never returned (use it to keep eval disjoint from train)."""
    if not (MIN_STEPS <= min_steps <= max_steps <= MAX_STEPS):
        raise ValueError(f"synthetic: need {MIN_STEPS} ≤ min_steps ≤ max_steps ≤ {MAX_STEPS}, "
                         f"got min_steps={min_steps}, max_steps={max_steps}")
    if n < 0:
        raise ValueError(f"synthetic: n must be ≥ 0, got {n}")
    names = sorted(FAMILIES) if families is None else list(families)
    for f in names:
        if f not in FAMILIES:
            raise ValueError(f"synthetic: unknown family {f!r}; valid: {', '.join(sorted(FAMILIES))}")
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[SyntheticProblem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"synthetic: could only make {len(out)} distinct problems of {n} with these settings")
        steps = rng.randint(min_steps, max_steps)
        family = rng.choice(names)
        question, solution, ans = _one(rng, steps, family)
        if question in seen:
            continue
        seen.add(question)
        out.append(SyntheticProblem(id=f"synthetic-{seed}-{len(out)}", question=question, solution=solution,
                                    answer=str(ans), steps=steps, family=family))
    return out


def generate_problems(n: int, *, seed: int, min_steps: int = 2, max_steps: int = 4,
                      exclude: Iterable[str] = ()) -> list[Example]:
    """Like generate_problems_with_solutions, as `Example`s (answer = the bare integer)."""
    return [p.to_example() for p in generate_problems_with_solutions(
        n, seed=seed, min_steps=min_steps, max_steps=max_steps, exclude=exclude)]
