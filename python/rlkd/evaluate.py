"""Held-out evaluation judged by the verifier (Rust first, math-verify fallback).

- :func:`greedy_pass_at_1`: what training calls on its eval pool.
- ``rlkd-eval`` (:func:`main`): greedy pass@1 and, with sampling, unbiased pass@k and maj@k of
  any model, rlkd checkpoint or run directory on a GSM8K- or MATH-format data file; writes
  ``eval.json``. See docs/eval.md.

Unknown verdicts are reported separately and never counted as wrong silently: pass@1 is
`correct / n`, and `unknown` says how many of the n could not be decided.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlkd import _core
from rlkd.config import render_template
from rlkd._core import RlkdError
from rlkd.data import FORMATS, Example, load_examples
from rlkd.rollout import render_prompts

EQUAL, UNKNOWN, NO_ANSWER = int(_core.Verdict.Equal), int(_core.Verdict.Unknown), int(_core.Verdict.NoAnswer)
VERDICT_NAMES = {0: "NotEqual", 1: "Equal", 2: "Unknown", 3: "NoAnswer"}


@dataclass
class EvalResult:
    n: int
    correct: int
    unknown: int
    no_answer: int
    rows: list[dict] = field(default_factory=list)

    @property
    def pass_at_1(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    def summary(self, prefix: str = "eval/") -> dict[str, float]:
        from rlkd.significance import wilson_interval

        lo, hi = wilson_interval(self.correct, self.n)
        finished = [r["finished"] for r in self.rows if "finished" in r]
        tokens = [r["tokens"] for r in self.rows if "tokens" in r]
        return {
            f"{prefix}pass@1": self.pass_at_1,
            f"{prefix}pass@1_ci95_low": lo,
            f"{prefix}pass@1_ci95_high": hi,
            f"{prefix}unknown": self.unknown,
            f"{prefix}no_answer_rate": self.no_answer / self.n if self.n else float("nan"),
            f"{prefix}finished_rate": float(np.mean(finished)) if finished else float("nan"),
            f"{prefix}length_mean": float(np.mean(tokens)) if tokens else float("nan"),
            f"{prefix}n": self.n,
        }

    def to_json(self) -> dict:
        return {"summary": self.summary(), "rows": self.rows}

    @classmethod
    def from_json(cls, data: dict) -> "EvalResult":
        rows = data["rows"]
        verdicts = [r["verdict"] for r in rows]
        return cls(n=len(rows), correct=verdicts.count("Equal"), unknown=verdicts.count("Unknown"),
                   no_answer=verdicts.count("NoAnswer"), rows=rows)


def greedy_pass_at_1(
    rollout,
    tokenizer,
    examples: Sequence[Example],
    *,
    system_prompt: str | None,
    user_template: str,
    max_new_tokens: int | None = None,
    timeout_s: float = 5.0,
    progress: bool = False,
) -> EvalResult:
    """Greedy decoding of every example once; verdicts against each example's gold answer.

    `user_template` uses the config's str.format syntax (`{question}`, literal braces doubled).
    The verdicts follow the training reward's rule: a response cut at `max_new_tokens` without an
    explicit final answer is NoAnswer (`rlkd.rewards.verifiable_rewards` with `finished`).
    """
    from rlkd.rewards import VRValues, verifiable_rewards

    labeled = [e for e in examples if e.answer is not None]
    users = [render_template(user_template, question=e.question) for e in labeled]
    prompt_ids = render_prompts(tokenizer, users, system_prompt=system_prompt)
    out = rollout.generate(prompt_ids, 1, greedy=True, progress=progress, max_new_tokens=max_new_tokens)
    _, verdicts = verifiable_rewards([str(e.answer) for e in labeled], out.response_text, VRValues(),
                                     finished=out.finished, timeout_s=timeout_s)
    rows = [
        {
            "id": e.id,
            "question": e.question,
            "gold": e.answer,
            "response": text,
            "extracted": _core.extract_answer(text),
            "verdict": VERDICT_NAMES.get(int(v), str(int(v))),
            "finished": bool(fin),
            "tokens": len(ids),
        }
        for e, text, v, fin, ids in zip(labeled, out.response_text, verdicts, out.finished, out.response_ids)
    ]
    v = np.asarray(verdicts)
    return EvalResult(
        n=len(labeled),
        correct=int((v == EQUAL).sum()),
        unknown=int((v == UNKNOWN).sum()),
        no_answer=int((v == NO_ANSWER).sum()),
        rows=rows,
    )


def eval_cache_key(model_key: str, examples: Sequence[Example], *, system_prompt: str | None, user_template: str,
                   max_new_tokens: int, dtype: str, backend: str = "hf") -> str:
    """Names one greedy evaluation: the same model, problems, prompt, budget and decoding engine give
    the same rows (engines differ by bf16 rounding, which flips near-tied greedy tokens)."""
    import hashlib

    named = {"v": 1, "model": model_key, "system": system_prompt, "user": user_template,
             "max_new_tokens": max_new_tokens, "dtype": dtype} | ({"backend": backend} if backend != "hf" else {})
    h = hashlib.sha256(json.dumps(named, sort_keys=True).encode())
    for e in examples:
        h.update(b"\0" + e.id.encode() + b"\1" + e.question.encode() + b"\2" + str(e.answer).encode())
    return h.hexdigest()[:16]


def cached_greedy_pass_at_1(cache_key: str, run_eval) -> tuple[EvalResult, bool]:
    """`run_eval()` once per key: its result is kept under <RLKD_CACHE>/evals/<key>.json.
    Greedy decoding of a fixed model is deterministic, so the cached rows are the eval's rows."""

    from rlkd.weights import cache_dir

    path = cache_dir() / "evals" / f"{cache_key}.json"
    if path.exists():
        return EvalResult.from_json(json.loads(path.read_text())), True
    result = run_eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=1))
    tmp.replace(path)
    return result, False


# =============================================================================================
# rlkd-eval: greedy pass@1, pass@k and maj@k of any model / checkpoint on a data file
# =============================================================================================

#: Built-in GSM8K-style exemplars for `--few-shot N` (written for rlkd, not taken from any test
#: set). Each answer reasons briefly and ends with "The answer is X." (which the extractor reads).
BUILTIN_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("A baker makes 24 muffins in the morning and 18 in the afternoon. He sells 30 of them. "
     "How many muffins are left?",
     "He makes 24 + 18 = 42 muffins. After selling 30, 42 - 30 = 12 are left. The answer is 12."),
    ("Maria buys 3 notebooks at $4 each and a pen for $2. How much does she spend in total?",
     "The notebooks cost 3 * 4 = 12 dollars. With the pen she spends 12 + 2 = 14 dollars. The answer is 14."),
    ("A train travels at 60 miles per hour for 2.5 hours. How far does it travel?",
     "Distance is speed times time: 60 * 2.5 = 150 miles. The answer is 150."),
    ("Tom has 5 boxes with 8 apples in each box. He gives away a quarter of the apples. "
     "How many apples does he keep?",
     "He has 5 * 8 = 40 apples. A quarter is 40 / 4 = 10 apples, so he keeps 40 - 10 = 30. The answer is 30."),
    ("A class has 28 students. Half of them play soccer, and 4 of the soccer players also play chess. "
     "How many soccer players do not play chess?",
     "Half of 28 is 28 / 2 = 14 soccer players. Of them, 14 - 4 = 10 do not play chess. The answer is 10."),
    ("Lena saves $15 every week. How many weeks does she need to save $120?",
     "She needs 120 / 15 = 8 weeks. The answer is 8."),
    ("A rectangle is 7 cm long and 3 cm wide. What is its perimeter in centimeters?",
     "The perimeter is 2 * (7 + 3) = 2 * 10 = 20 cm. The answer is 20."),
    ("Sam reads 12 pages a day for 6 days and then 20 pages on the seventh day. "
     "How many pages does he read in total?",
     "In six days he reads 12 * 6 = 72 pages. With the seventh day, 72 + 20 = 92 pages. The answer is 92."),
)

FEW_SHOT_TEMPLATE = "Question: {question}\nAnswer:"
PROMPT_MODES = ("auto", "chat", "raw")


class EvalError(RlkdError):
    """A bad rlkd-eval input: missing file, no labeled rows, bad template, no checkpoint, ..."""


# ----------------------------------------------------------------------------- pure metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples with c correct (Chen et al. 2021, eq. 1):
    ``1 - C(n-c, k) / C(n, k)``, computed as a stable product. Needs ``1 <= k <= n``."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(correct: Sequence[int], n: int, k: int) -> float:
    """pass@k averaged over problems (each with n samples, ``correct[i]`` of them right)."""
    if len(correct) == 0:
        return float("nan")
    return float(np.mean([pass_at_k(n, int(c), k) for c in correct]))


def majority_vote(keys: Sequence[str | None]) -> tuple[str | None, int | None, int]:
    """Most frequent answer among ``keys`` (normalised extracted answers; None = no answer, never
    a candidate). Ties go to the answer seen first. Returns (answer, index of its first sample,
    votes); (None, None, 0) when no sample has an answer."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None, None, 0
    best = max(counts, key=lambda a: (counts[a], -first[a]))
    return best, first[best], counts[best]


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, plus n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks


def aggregate(verdicts: np.ndarray, keys: Sequence[Sequence[str | None]], ks: Sequence[int]) -> tuple[dict, list[dict]]:
    """Metrics of an [items, n] verdict matrix (ints of rlkd.Verdict) with each sample's
    normalised answer (None: nothing extracted).

    A sample counts as correct only when Equal; Unknown samples are counted separately
    (``unknown_rate``), as are samples without an answer. pass@k is the unbiased estimator over
    the n samples, for each k <= n; maj@k votes over the FIRST k samples of each item and scores
    the winning answer by the verdict of its first sample (Unknown there is counted in
    ``maj@k_unknown``, an item where no sample has an answer in ``maj@k_no_answer``).
    """
    v = np.asarray(verdicts)
    if v.ndim != 2 or v.shape[0] != len(keys) or any(len(k) != v.shape[1] for k in keys):
        raise ValueError(f"verdicts {v.shape} do not match keys ({len(keys)} items)")
    items, n = v.shape
    correct = (v == EQUAL).sum(axis=1)
    summary: dict[str, float | int] = {
        "items": items,
        "samples_per_item": n,
        "sample_accuracy": float((v == EQUAL).mean()) if v.size else float("nan"),
        "unknown_rate": float((v == UNKNOWN).mean()) if v.size else float("nan"),
        "no_answer_rate": float((v == NO_ANSWER).mean()) if v.size else float("nan"),
    }
    per_item: list[dict] = [{"correct": int(c)} for c in correct]
    for k in ks:
        if not 1 <= k <= n:
            raise ValueError(f"k={k} outside 1..{n} (pass@k and maj@k need at least k samples)")
        summary[f"pass@{k}"] = mean_pass_at_k(correct, n, k)
    for k in ks:
        right = unknown = none = 0
        for i in range(items):
            answer, idx, votes = majority_vote(keys[i][:k])
            if idx is None:
                none += 1
            elif v[i, idx] == EQUAL:
                right += 1
            elif v[i, idx] == UNKNOWN:
                unknown += 1
            if k == n:
                per_item[i].update({"vote": answer, "votes": votes,
                                    "vote_verdict": None if idx is None else VERDICT_NAMES[int(v[i, idx])]})
        summary[f"maj@{k}"] = right / items if items else float("nan")
        summary[f"maj@{k}_unknown"] = unknown
        summary[f"maj@{k}_no_answer"] = none
    return summary, per_item


# ----------------------------------------------------------------------------- model and prompts


@dataclass
class ResolvedModel:
    path: str  # what from_pretrained / vLLM loads
    kind: str  # "run" | "checkpoint" | "dir" | "spec" (embedded or hub id)
    run_dir: Path | None = None


def resolve_eval_model(spec: str) -> ResolvedModel:
    """A model spec (rlkd.models.resolve_model), an HF directory, an rlkd checkpoint directory, or
    an rlkd run directory (its latest checkpoint)."""
    from rlkd.checkpoint import latest_checkpoint
    from rlkd.models import resolve_model

    p = Path(spec).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            if p.parent.name == "checkpoints":
                return ResolvedModel(str(p), "checkpoint", p.parent.parent)
            return ResolvedModel(str(p), "dir")
        if (p / "checkpoints").is_dir() or (p / "metrics.jsonl").is_file() or (p / "config.toml").is_file():
            ckpt = latest_checkpoint(p)
            if ckpt is None:
                raise EvalError(f"{p} is an rlkd run directory without checkpoints (nothing under {p / 'checkpoints'})")
            if not (ckpt / "config.json").is_file():
                raise EvalError(f"{ckpt}: checkpoint without config.json")
            return ResolvedModel(str(ckpt), "run", p)
        raise EvalError(f"{p} is neither a Hugging Face model directory (no config.json) nor an rlkd run "
                        "directory (no checkpoints/)")
    return ResolvedModel(resolve_model(spec), "spec")


def run_prompts(run_dir: Path | None) -> tuple[str | None, str | None]:
    """(system_prompt, user_template) of an rlkd run's config.toml, (None, None) when there is none.
    An empty system prompt in the config reads as "" (= no system message)."""
    if run_dir is None or not (run_dir / "config.toml").is_file():
        return None, None
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
    model = tomllib.loads((run_dir / "config.toml").read_text()).get("model", {})
    system, user = model.get("system_prompt"), model.get("user_template")
    return (system if isinstance(system, str) else None), (user if isinstance(user, str) else None)


def check_user_template(template: str) -> None:
    from rlkd.config import template_fields

    try:
        names = template_fields(template)
    except ValueError as err:
        raise EvalError(f"--user-template {template!r}: {err}") from None
    if "question" not in names or set(names) != {"question"}:
        raise EvalError(f"--user-template {template!r} must contain {{question}} and no other placeholder "
                        "(literal braces doubled: \\boxed{{}})")


_CALC = re.compile(r"<<[^<>]*>>")


def exemplar_answer(example: Example) -> str:
    """The worked answer of a few-shot exemplar: a GSM8K solution without calculator annotations,
    its '#### x' line turned into 'The answer is x.'; a MATH solution as is; else the bare answer."""
    sol = example.solution
    if sol and "####" in sol:
        body, _, gold = sol.rpartition("####")
        body = _CALC.sub("", body).strip()
        return f"{body}\nThe answer is {gold.strip()}.".strip()
    if sol:
        return sol.strip()
    return f"The answer is {example.answer}."


def few_shot_exemplars(n: int, source: str | None, exclude: set[str], *, format: str = "auto") -> list[tuple[str, str]]:
    """The first n exemplars of `source` (a data file; questions in `exclude` skipped) or of the
    built-in set."""
    if n <= 0:
        return []
    if source is None:
        if n > len(BUILTIN_EXEMPLARS):
            raise EvalError(f"--few-shot {n}: the built-in set has {len(BUILTIN_EXEMPLARS)} exemplars; "
                            "give more with --few-shot-file")
        return list(BUILTIN_EXEMPLARS[:n])
    rows = [e for e in load_examples(source, format=format) if e.answer is not None and e.question not in exclude]
    if len(rows) < n:
        raise EvalError(f"--few-shot {n}: {source} has only {len(rows)} labeled rows that are not evaluated")
    return [(e.question, exemplar_answer(e)) for e in rows[:n]]


@dataclass
class PromptBuilder:
    """Renders questions to prompt token ids: the chat template (system + user turn) or raw text
    (base models), optionally preceded by few-shot exemplars inside the same user turn."""

    tokenizer: Any
    mode: str  # "chat" | "raw"
    system_prompt: str | None
    user_template: str
    exemplars: list[tuple[str, str]] = field(default_factory=list)

    def text(self, question: str) -> str:
        shots = [render_template(self.user_template, question=q) + " " + a for q, a in self.exemplars]
        return "\n\n".join(shots + [render_template(self.user_template, question=question)])

    def full_text(self, question: str) -> str:
        """The exact text the model sees (chat markup included)."""
        user = self.text(question)
        if self.mode == "raw":
            return user
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else [])
        messages.append({"role": "user", "content": user})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def ids(self, questions: Sequence[str]) -> list[list[int]]:
        if self.mode == "chat":
            return render_prompts(self.tokenizer, [self.text(q) for q in questions], system_prompt=self.system_prompt)
        return [list(self.tokenizer(self.text(q), add_special_tokens=True)["input_ids"]) for q in questions]

    @property
    def stop(self) -> str | None:
        """With exemplars, a response is cut where the model starts another exemplar (the template
        text before {question}, on a new line): base models keep writing Question/Answer pairs."""
        if not self.exemplars:
            return None
        head = self.user_template.split("{question}", 1)[0].strip()
        return "\n" + head if head else None

    def cut(self, response: str) -> str:
        stop = self.stop
        if stop and stop in response:
            return response[: response.index(stop)]
        return response

    def cut_all(self, responses: Sequence[str], finished: Sequence[bool]) -> tuple[list[str], list[bool]]:
        """`cut` of each response, and whether it finished: at EOS, or where `stop` cut it."""
        texts = [self.cut(r) for r in responses]
        return texts, [bool(f) or t != r for t, r, f in zip(texts, responses, finished)]


# ----------------------------------------------------------------------------- generation + scoring


def generate_all(rollout: Any, prompt_ids: list[list[int]], n: int, *, greedy: bool, chunk: int,
                 progress: bool, desc: str, max_new_tokens: int | None = None) -> tuple[list[str], list[bool], list[int]]:
    """n responses per prompt (prompt-major): texts, finished flags, token counts. Prompts are
    generated longest first in chunks of `chunk` prompts under one progress bar (ETA)."""
    from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]

    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    texts: list[str] = [""] * (len(prompt_ids) * n)
    finished = [False] * len(texts)
    lengths = [0] * len(texts)
    kwargs = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    bar = tqdm(total=len(texts), desc=desc, unit="seq", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(order), chunk):
            idx = order[start:start + chunk]
            out = rollout.generate([prompt_ids[i] for i in idx], n, greedy=greedy, progress=False, **kwargs)
            for j, i in enumerate(idx):
                for s in range(n):
                    k = j * n + s
                    texts[i * n + s] = out.response_text[k]
                    finished[i * n + s] = bool(out.finished[k])
                    lengths[i * n + s] = len(out.response_ids[k])
            bar.update(len(idx) * n)
    finally:
        bar.close()
    return texts, finished, lengths


def score(golds: Sequence[str], responses: Sequence[str], n: int, ks: Sequence[int], *,
          finished: Sequence[bool] | None = None, timeout_s: float = 5.0) -> tuple[dict, list[dict]]:
    """Verify item-major responses (n per gold) and aggregate (see :func:`aggregate`). Per item:
    extracted answers, their normalised keys, verdict names, correct count and the vote.

    With `finished`, the training reward's rule (as in the held-out eval of a run): a response cut
    at the token budget without an explicit final answer is NoAnswer, not its last number."""
    from rlkd.rewards import VRValues, verifiable_rewards

    if len(responses) != len(golds) * n:
        raise ValueError(f"{len(responses)} responses for {len(golds)} golds x n={n}")
    flat_golds = [g for g in golds for _ in range(n)]
    _, flat = verifiable_rewards(flat_golds, list(responses), VRValues(), finished=finished, timeout_s=timeout_s)
    verdicts = flat.astype(np.int64).reshape(len(golds), n)
    extracted = _core.extract_answers(list(responses))
    keys = [_core.normalize_answer(a) if a is not None else None for a in extracted]
    grouped = [keys[i * n:(i + 1) * n] for i in range(len(golds))]
    summary, per_item = aggregate(verdicts, grouped, ks)
    for i, row in enumerate(per_item):
        row["extracted"] = extracted[i * n:(i + 1) * n]
        row["verdicts"] = [VERDICT_NAMES[int(x)] for x in verdicts[i]]
    summary["unknown"] = int((verdicts == UNKNOWN).sum())
    summary["no_answer"] = int((verdicts == NO_ANSWER).sum())
    summary["correct"] = int((verdicts == EQUAL).sum())
    return summary, per_item


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlkd-eval",
        description="Greedy pass@1 (and with --samples: pass@k, maj@k) of a model or rlkd checkpoint on a "
                    "GSM8K- or MATH-format data file. Writes eval.json and prints a summary table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT",
                   help="HF model dir or hub id, embedded:NAME, an rlkd checkpoint dir "
                        "(runs/X/checkpoints/step-000006) or an rlkd run dir (its latest checkpoint)")
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, help="jsonl / json / parquet file, datasets dir or hf:OWNER/NAME")
    d.add_argument("--format", default="auto", choices=FORMATS)
    d.add_argument("--question-field", default=None)
    d.add_argument("--answer-field", default=None)
    d.add_argument("--split", default=None, help="split of a datasets source")
    d.add_argument("--limit", type=int, default=None, help="first N rows only")
    pr = p.add_argument_group("prompting")
    pr.add_argument("--prompt", default="auto", choices=PROMPT_MODES,
                    help="chat: the tokenizer's chat template; raw: plain text (base models); auto: chat when "
                         "the tokenizer has a template")
    pr.add_argument("--system-prompt", default=None,
                    help="system message ('' = none); default: the run's config, else rlkd's default")
    pr.add_argument("--user-template", default=None,
                    help="user message, str.format syntax with {question} (literal braces doubled); default: "
                         f"the run's config, else rlkd's default; with --few-shot {FEW_SHOT_TEMPLATE!r}")
    pr.add_argument("--few-shot", type=int, default=0, metavar="N",
                    help="N worked exemplars before the question, in one user turn (or raw text)")
    pr.add_argument("--few-shot-file", default=None,
                    help="exemplars from this data file (first N labeled rows not evaluated); default: built-in set")
    g = p.add_argument_group("generation")
    g.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    g.add_argument("--samples", type=int, default=0, metavar="K",
                   help="also sample K responses per question: pass@k and maj@k")
    g.add_argument("--k", type=int, action="append", default=None,
                   help="k of pass@k / maj@k (repeatable, each <= --samples); default 1, 2, 4, ..., K")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--no-greedy", action="store_true", help="skip the greedy pass (needs --samples)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--batch-size", type=int, default=16, help="sequences per generate call (HF backend)")
    g.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("runtime")
    r.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM backend only")
    r.add_argument("--verify-timeout", type=float, default=5.0, help="seconds per math-verify fallback call")
    r.add_argument("--trust-remote-code", action="store_true")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=None,
                   help="output directory (default: RUN_DIR/eval/<checkpoint>-<data>-<time>/ for rlkd "
                        "checkpoints, <model dir>-eval-<data>-<time>/ next to a local model, else ./eval-<time>/)")
    o.add_argument("--no-progress", action="store_true")
    return p


def default_out_dir(resolved: ResolvedModel, data: str, stamp: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data.removeprefix("hf:")).stem or "data")
    if resolved.kind in ("run", "checkpoint") and resolved.run_dir is not None:
        return resolved.run_dir / "eval" / f"{Path(resolved.path).name}-{stem}-{stamp}"
    if resolved.kind == "dir":
        m = Path(resolved.path).resolve()
        return m.parent / f"{m.name}-eval-{stem}-{stamp}"
    return Path(f"eval-{stamp}")


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if x != x else f"{x:.4f}"
    return str(x)


def summary_table(summary: dict) -> str:
    """The printed table: one line per metric, with counts."""
    lines = [f"{'metric':<22} {'value':>8}  detail", "-" * 64]
    gr = summary.get("greedy")
    if gr:
        lines.append(f"{'greedy pass@1':<22} {_fmt(gr['pass@1']):>8}  {gr['correct']}/{gr['items']} correct, "
                     f"{gr['unknown']} unknown, {gr['no_answer']} no answer")
        lines.append(f"{'  if unknown correct':<22} {_fmt(gr['pass@1_if_unknown_correct']):>8}  upper bound")
        lines.append(f"{'  finished (EOS)':<22} {_fmt(gr['finished_rate']):>8}  mean length "
                     f"{gr['response_tokens_mean']:.1f} tokens")
    sa = summary.get("sampled")
    if sa:
        n = sa["samples_per_item"]
        lines.append(f"{'sample accuracy':<22} {_fmt(sa['sample_accuracy']):>8}  {sa['correct']}/{sa['items'] * n} "
                     f"samples (T={sa['temperature']:g}, top_p={sa['top_p']:g}), {sa['unknown']} unknown, "
                     f"{sa['no_answer']} no answer")
        for k in sa["ks"]:
            lines.append(f"{f'pass@{k}':<22} {_fmt(sa[f'pass@{k}']):>8}  unbiased, n={n}")
        for k in sa["ks"]:
            lines.append(f"{f'maj@{k}':<22} {_fmt(sa[f'maj@{k}']):>8}  {sa[f'maj@{k}_unknown']} unknown, "
                         f"{sa[f'maj@{k}_no_answer']} without any answer")
    return "\n".join(lines)


def check_runtime_args(args: argparse.Namespace) -> None:
    """--out, sampling, dtype and device values, checked before any model loads."""
    import math

    import torch

    from rlkd.models import resolve_dtype
    from rlkd.preflight import output_dir_problem

    if args.out is not None:
        problem = output_dir_problem(Path(args.out).expanduser())
        if problem is not None:
            raise EvalError(f"--out {args.out}: {problem}; --out names a directory (eval.json is written inside)")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise EvalError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        raise EvalError(f"--top-p must lie in (0, 1], got {args.top_p}")
    if not (math.isfinite(args.verify_timeout) and args.verify_timeout > 0):
        raise EvalError(f"--verify-timeout must be a finite number of seconds > 0, got {args.verify_timeout}")
    if args.threads is not None and args.threads < 1:
        raise EvalError(f"--threads must be >= 1, got {args.threads}")
    if not 0 < args.gpu_memory_utilization <= 1:
        raise EvalError(f"--gpu-memory-utilization must lie in (0, 1], got {args.gpu_memory_utilization}")
    if args.device is not None:
        try:
            kind = torch.device(args.device).type
        except (RuntimeError, ValueError):
            raise EvalError(f"--device {args.device!r}: not a device; use cpu, cuda or cuda:N") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise EvalError(f"--device {args.device!r}: CUDA is not available on this machine")
    try:
        resolve_dtype(args.dtype, args.device or "cpu")
    except ValueError as err:
        raise EvalError(f"--dtype: {err}") from None


def evaluate_cli(args: argparse.Namespace) -> Path:
    """Everything rlkd-eval does; returns the eval.json path. Raises EvalError / DataError /
    ModelSpecError on bad input."""
    import torch

    from rlkd.models import load_causal_lm, set_torch_threads

    # ---- validate everything cheap before loading any model
    check_runtime_args(args)
    if args.samples < 0:
        raise EvalError(f"--samples must be >= 0, got {args.samples}")
    if args.no_greedy and args.samples == 0:
        raise EvalError("--no-greedy needs --samples K (nothing to evaluate otherwise)")
    if args.few_shot < 0:
        raise EvalError(f"--few-shot must be >= 0, got {args.few_shot}")
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise EvalError("--max-new-tokens and --batch-size must be >= 1")
    ks = sorted(set(args.k)) if args.k else (default_ks(args.samples) if args.samples else [])
    bad = [k for k in ks if not 1 <= k <= args.samples]
    if bad:
        raise EvalError(f"--k {bad[0]}: pass@k and maj@k need 1 <= k <= --samples ({args.samples}); the unbiased "
                        "estimator is defined only for n >= k")
    if args.user_template is not None:
        check_user_template(args.user_template)
    data = str(args.data)
    if not data.startswith("hf:") and not Path(data).expanduser().exists():
        raise EvalError(f"--data {data}: no such file or directory")
    if args.few_shot_file and not Path(args.few_shot_file).expanduser().exists():
        raise EvalError(f"--few-shot-file {args.few_shot_file}: no such file")
    examples = load_examples(data, format=args.format, question_field=args.question_field,
                             answer_field=args.answer_field, limit=args.limit, split=args.split)
    labeled = [e for e in examples if e.answer is not None]
    if not labeled:
        raise EvalError(f"--data {data}: no labeled rows ({len(examples)} rows, none with a gold answer; "
                        "set --answer-field / --format)")
    resolved = resolve_eval_model(args.model)
    run_system, run_user = run_prompts(resolved.run_dir)
    from rlkd.config import Config

    defaults = Config().model
    if args.few_shot:
        user_template = args.user_template if args.user_template is not None else FEW_SHOT_TEMPLATE
    else:
        user_template = args.user_template if args.user_template is not None else (run_user or defaults.user_template)
    check_user_template(user_template)
    system = args.system_prompt if args.system_prompt is not None else (
        run_system if run_system is not None else defaults.system_prompt)
    system = system or None
    exemplars = few_shot_exemplars(args.few_shot, args.few_shot_file, {e.question for e in labeled})

    # ---- model
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    set_torch_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.backend == "vllm":
        from transformers import AutoTokenizer

        from rlkd.rollout import VLLMRollout

        tokenizer: Any = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=args.trust_remote_code)
        rollout: Any = VLLMRollout(resolved.path, dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                                   max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                   top_p=args.top_p, seed=args.seed, trust_remote_code=args.trust_remote_code)
    else:
        from rlkd.rollout import HFRollout

        model, tokenizer = load_causal_lm(resolved.path, dtype=args.dtype, device=device,
                                          trust_remote_code=args.trust_remote_code, progress=not args.no_progress)
        rollout = HFRollout(model, tokenizer, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, batch_size=args.batch_size)
    mode = args.prompt
    if mode == "auto":
        mode = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if mode == "chat" and not getattr(tokenizer, "chat_template", None):
        raise EvalError(f"--prompt chat: the tokenizer of {resolved.path} has no chat template (use --prompt raw)")
    builder = PromptBuilder(tokenizer, mode, system if mode == "chat" else None, user_template, exemplars)
    prompt_ids = builder.ids([e.question for e in labeled])
    golds = [str(e.answer) for e in labeled]
    progress = not args.no_progress
    # One vLLM call sees every prompt (its scheduler batches); HF: chunks under one bar.
    def chunk(n: int) -> int:
        return len(prompt_ids) if args.backend == "vllm" else max(1, args.batch_size // n)

    summary: dict[str, Any] = {"items": len(labeled), "skipped_unlabeled": len(examples) - len(labeled)}
    items: list[dict] = [{"id": e.id, "question": e.question, "gold": e.answer} for e in labeled]
    timing: dict[str, float] = {}
    if not args.no_greedy:
        t0 = time.perf_counter()
        texts, fin, lens = generate_all(rollout, prompt_ids, 1, greedy=True, chunk=chunk(1),
                                        progress=progress, desc="greedy")
        timing["greedy_generate_s"] = time.perf_counter() - t0
        texts, fin = builder.cut_all(texts, fin)
        t0 = time.perf_counter()
        s, per = score(golds, texts, 1, [1], finished=fin, timeout_s=args.verify_timeout)
        timing["greedy_verify_s"] = time.perf_counter() - t0
        n = len(labeled)
        summary["greedy"] = {
            "items": n, "pass@1": s["correct"] / n, "correct": s["correct"], "unknown": s["unknown"],
            "no_answer": s["no_answer"], "not_equal": n - s["correct"] - s["unknown"] - s["no_answer"],
            "pass@1_if_unknown_correct": (s["correct"] + s["unknown"]) / n,
            "finished_rate": float(np.mean(fin)), "response_tokens_mean": float(np.mean(lens)),
            "tokens_per_s": sum(lens) / max(timing["greedy_generate_s"], 1e-9),
        }
        for item, text, f, ln, row in zip(items, texts, fin, lens, per):
            item["greedy"] = {"response": text, "extracted": row["extracted"][0], "verdict": row["verdicts"][0],
                              "finished": f, "tokens": ln}
    if args.samples:
        n = args.samples
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        texts, fin, lens = generate_all(rollout, prompt_ids, n, greedy=False, chunk=chunk(n),
                                        progress=progress, desc=f"sample x{n}")
        timing["sample_generate_s"] = time.perf_counter() - t0
        texts, fin = builder.cut_all(texts, fin)
        t0 = time.perf_counter()
        s, per = score(golds, texts, n, ks, finished=fin, timeout_s=args.verify_timeout)
        timing["sample_verify_s"] = time.perf_counter() - t0
        s.update({"ks": ks, "temperature": args.temperature, "top_p": args.top_p,
                  "finished_rate": float(np.mean(fin)), "response_tokens_mean": float(np.mean(lens)),
                  "tokens_per_s": sum(lens) / max(timing["sample_generate_s"], 1e-9)})
        summary["sampled"] = s
        for i, (item, row) in enumerate(zip(items, per)):
            item["samples"] = {"responses": texts[i * n:(i + 1) * n], "finished": fin[i * n:(i + 1) * n],
                               **row}
    summary["time"] = timing

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out if args.out is not None else default_out_dir(resolved, data, stamp)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model": args.model, "model_path": resolved.path, "model_kind": resolved.kind,
        "run_dir": str(resolved.run_dir) if resolved.run_dir else None,
        "data": data, "format": args.format, "limit": args.limit, "backend": args.backend,
        "device": device if args.backend == "hf" else "cuda", "dtype": args.dtype, "seed": args.seed,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "samples": args.samples, "ks": ks, "temperature": args.temperature, "top_p": args.top_p,
        "greedy": not args.no_greedy, "prompt_mode": mode, "system_prompt": builder.system_prompt,
        "user_template": user_template, "few_shot": len(exemplars), "few_shot_file": args.few_shot_file,
        "stop": builder.stop, "prompt_example": builder.full_text(labeled[0].question),
        "created": stamp,
    }
    path = out_dir / "eval.json"
    path.write_text(json.dumps({"config": config, "summary": summary, "items": items}, indent=1, ensure_ascii=False))
    return path


def main(argv: list[str] | None = None) -> int:
    from rlkd.cli_errors import run_cli

    args = _parser().parse_args(argv)
    return run_cli("rlkd-eval", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    path = evaluate_cli(args)
    result = json.loads(path.read_text())
    cfg = result["config"]
    print(f"rlkd-eval: {cfg['model_path']} on {cfg['data']} ({result['summary']['items']} labeled questions, "
          f"{cfg['prompt_mode']} prompt, {cfg['few_shot']}-shot, max {cfg['max_new_tokens']} new tokens)")
    print(summary_table(result["summary"]))
    print(f"rlkd-eval: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
