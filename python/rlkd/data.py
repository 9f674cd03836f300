"""Questions and gold answers: loaders, the labeled/unlabeled/eval pools and the prompt sampler.

Sources (`load_examples`):
- `.jsonl` / `.ndjson` (one JSON object per line), `.json` (an array of objects, or an object
  with one list of objects such as `{"data": [...]}`), `.parquet` (pyarrow);
- a Hugging Face `datasets` dataset: a directory written by `save_to_disk` (`load_from_disk`),
  any other directory or a `.py` loading script (`load_dataset(path)`), or `hf:OWNER/NAME`
  from the hub (`load_dataset`; a clear error where no hub is reachable).

Formats (`format="auto"` decides from the fields of the first row):
- `gsm8k`: `question`, `answer`; the gold is the text after the last `####` (commas kept as
  written, e.g. `1,000`: the verifier handles separators). An answer without `####` is taken as
  a bare gold answer if it is one short line, otherwise it is an error.
- `math`: `problem`, and `answer` when present, else the last `\\boxed{}` of `solution`
  (`rlkd._core.extract_answer`, with a pure-Python fallback for builds without it).
`question_field` / `answer_field` override the field names. A file with no answer field at all is
an unlabeled data set (every `answer` None).

Errors (`DataError`) name the file and the line (jsonl) or row (other sources).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from rlkd import _core
from rlkd._core import RlkdError

__all__ = ["Example", "DataError", "Pools", "PromptSampler", "load_examples", "build_pools", "labeled_per_batch",
           "gsm8k_gold", "last_boxed", "share_of"]

FORMATS = ("auto", "gsm8k", "math")
_ID_FIELDS = ("id", "unique_id", "idx")


class DataError(RlkdError):
    """A data file is missing, unreadable or has a bad row."""


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str | None  # bare gold answer ("18", "\\frac{14}{3}") or None when unlabeled
    # The worked solution where the source has one (GSM8K `answer`, MATH `solution`, synthetic);
    # for SFT warm-up and inspection. Dropped together with `answer` in the unlabeled pool.
    solution: str | None = field(default=None, repr=False, compare=False)

    def unlabeled(self) -> "Example":
        return replace(self, answer=None, solution=None)


def labeled_per_batch(prompts_per_step: int, labeled_fraction: float) -> int:
    """Labeled prompts in each batch: labeled_fraction x prompts_per_step rounded half up."""
    return int(math.floor(labeled_fraction * prompts_per_step + 0.5))


# ------------------------------------------------------------------------------------------
# Answer extraction
# ------------------------------------------------------------------------------------------


def gsm8k_gold(text: str) -> str | None:
    """The text after the last `####`, stripped (None if there is no `####`)."""
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip()


def last_boxed(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}` / `\\fbox{...}` (pure Python fallback)."""
    best = None
    for macro in ("\\boxed{", "\\fbox{"):
        start = text.rfind(macro)
        while start != -1:
            i, depth = start + len(macro), 1
            while i < len(text) and depth:
                if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
                    i += 2
                    continue
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            if depth == 0:
                if best is None or start > best[0]:
                    best = (start, text[start + len(macro): i - 1].strip())
                break
            start = text.rfind(macro, 0, start)
    return best[1] if best and best[1] else None


def _boxed_answer(solution: str) -> str | None:
    if "\\boxed" not in solution and "\\fbox" not in solution:
        return None
    extract = getattr(_core, "extract_answer", None)
    if extract is not None:
        return extract(solution)
    return last_boxed(solution)


# ------------------------------------------------------------------------------------------
# Reading rows
# ------------------------------------------------------------------------------------------


#: Data sets shipped inside the package (python/rlkd/datasets/, with their licences).
BUILTIN_DATASETS = {
    "gsm8k/train": "gsm8k_train.jsonl.gz",
    "gsm8k/test": "gsm8k_test.jsonl.gz",
}


def builtin_dataset_path(ref: str) -> Path:
    """The file behind `builtin:NAME` (see BUILTIN_DATASETS)."""
    name = ref.removeprefix("builtin:")
    if name not in BUILTIN_DATASETS:
        raise DataError(f"{ref}: unknown built-in data set; known: "
                        + ", ".join(f"builtin:{k}" for k in BUILTIN_DATASETS))
    return Path(__file__).parent / "datasets" / BUILTIN_DATASETS[name]


def _rows(path: str | Path, *, split: str | None, subset: str | None) -> tuple[str, Iterator[tuple[str, Any]]]:
    """(source name, iterator of (where, row)) where `where` is 'line N' or 'row N'."""
    ref = str(path)
    if ref.startswith("hf:"):
        return ref, _hf_rows(ref, _load_hub(ref[3:], split=split, subset=subset))
    if ref.startswith("builtin:"):
        return ref, _jsonl_rows(builtin_dataset_path(ref))
    p = Path(ref).expanduser()
    if not p.exists():
        raise DataError(f"{ref}: no such file or directory (relative paths resolve against {Path.cwd()})")
    if p.is_dir():
        return ref, _hf_rows(ref, _load_hf_dir(p, split=split))
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson") or p.name.lower().endswith((".jsonl.gz", ".ndjson.gz")):
        return ref, _jsonl_rows(p)
    if suffix == ".json":
        return ref, _json_rows(p)
    if suffix == ".parquet":
        return ref, _parquet_rows(p)
    if suffix == ".py":
        return ref, _hf_rows(ref, _load_hf_script(p, split=split))
    raise DataError(f"{ref}: unknown file type {suffix!r}; use .jsonl(.gz), .json, .parquet, builtin:NAME or a datasets directory")


def _jsonl_rows(p: Path) -> Iterator[tuple[str, Any]]:
    import gzip

    opener = gzip.open if p.suffix.lower() == ".gz" else open
    with opener(p, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{p}:{n}: not UTF-8 text (is this a binary file?)") from None
            if not line.strip():
                continue
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{p}:{n}: invalid JSON at line {n}, column {err.colno}: {err.msg}") from None


def _json_rows(p: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{p}: not UTF-8 text (is this a binary file?)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{p}:{err.lineno}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{p}: expected a JSON array of objects (or an object holding one such array)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON array of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        yield f"row {i}", row


def _parquet_rows(p: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"{p}: cannot read parquet: {err}") from None
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"row {i}", row
            i += 1


def _import_datasets(ref: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{ref}: reading a Hugging Face dataset needs `datasets` (pip install 'rlkd[datasets]')") from None
    return datasets


def _pick_split(ref: str, ds: Any, split: str | None) -> Any:
    datasets = _import_datasets(ref)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        want = split or "train"
        if want not in ds:
            raise DataError(f"{ref}: no split {want!r}; available: {', '.join(ds.keys())}")
        return ds[want]
    return ds


def _load_hf_dir(p: Path, *, split: str | None) -> Any:
    datasets = _import_datasets(str(p))
    saved = (p / "dataset_dict.json").exists() or (p / "state.json").exists()
    try:
        ds = datasets.load_from_disk(str(p)) if saved else datasets.load_dataset(str(p))
    except Exception as err:
        raise DataError(f"{p}: cannot load the dataset directory: {type(err).__name__}: {err}") from None
    return _pick_split(str(p), ds, split)


def _load_hf_script(p: Path, *, split: str | None) -> Any:
    datasets = _import_datasets(str(p))
    try:
        ds = datasets.load_dataset(str(p))
    except Exception as err:
        raise DataError(f"{p}: cannot load the dataset script: {type(err).__name__}: {err}") from None
    return _pick_split(str(p), ds, split)


def _load_hub(hub_id: str, *, split: str | None, subset: str | None) -> Any:
    ref = f"hf:{hub_id}"
    datasets = _import_datasets(ref)
    try:
        ds = datasets.load_dataset(hub_id, subset or None, split=split or "train")
    except Exception as err:
        raise DataError(
            f"{ref}: cannot load from the Hugging Face hub ({type(err).__name__}: {err}). Without network "
            "access, download the data elsewhere and point the config at the local file or directory"
        ) from None
    return ds


def _hf_rows(ref: str, ds: Any) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(ds):
        yield f"row {i}", row


# ------------------------------------------------------------------------------------------
# Rows to examples
# ------------------------------------------------------------------------------------------


def _detect_format(keys: Iterable[str]) -> str:
    keys = set(keys)
    if "problem" in keys:
        return "math"
    if "question" in keys:
        return "gsm8k"
    return "unknown"


def load_examples(
    path: str | Path,
    *,
    format: str = "auto",
    question_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
    split: str | None = None,
    subset: str | None = None,
) -> list[Example]:
    """Examples from a file, a datasets directory or `hf:OWNER/NAME` (see the module doc)."""
    if format not in FORMATS:
        raise DataError(f"unknown format {format!r}; valid: {', '.join(FORMATS)}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be ≥ 0, got {limit}")
    source, rows = _rows(path, split=split, subset=subset)
    name = Path(source).name if not source.startswith("hf:") else source
    out: list[Example] = []
    fmt = None if format == "auto" else format
    q_field = question_field or None
    a_field = answer_field or None
    for where, row in rows:
        if limit is not None and len(out) >= limit:
            break
        loc = f"{source}: {where}" if where.startswith("row") else f"{source}:{where.split()[1]}: {where}"
        if not isinstance(row, dict):
            raise DataError(f"{loc}: expected an object with the question and answer, got {type(row).__name__}")
        if fmt is None:
            fmt = _detect_format(row)
            if fmt == "unknown" and q_field is None:
                raise DataError(f"{loc}: cannot tell the format from the fields {sorted(row)}; set data.format "
                                "or data.question_field")
            fmt = "gsm8k" if fmt == "unknown" else fmt
        qf = q_field or ("problem" if fmt == "math" else "question")
        # Each row says for itself whether it is labeled (a file may mix both); a named
        # answer_field is required in every row.
        answer_keys = ("answer", "solution") if fmt == "math" else ("answer",)
        labeled = a_field is not None or any(row.get(k) not in (None, "") for k in answer_keys)
        question = row.get(qf)
        if qf not in row:
            raise DataError(f"{loc}: missing field {qf!r} (available: {', '.join(sorted(row))})")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{loc}: field {qf!r} must be a non-empty string, got {question!r:.60}")
        answer, solution = (_answer(row, fmt, a_field, loc) if labeled else (None, None))
        ident = next((str(row[k]) for k in _ID_FIELDS if row.get(k) not in (None, "")), f"{name}#{len(out)}")
        out.append(Example(id=ident, question=question.strip(), answer=answer, solution=solution))
    return out


def _answer(row: dict, fmt: str, a_field: str | None, loc: str) -> tuple[str, str | None]:
    def text_of(key: str) -> str:
        value = row[key]
        if isinstance(value, bool) or value is None:
            raise DataError(f"{loc}: field {key!r} must be a string or a number, got {value!r}")
        if isinstance(value, (int, float)):
            return str(value)
        if not isinstance(value, str):
            raise DataError(f"{loc}: field {key!r} must be a string or a number, got {type(value).__name__}")
        return value

    if fmt == "math":
        key = a_field
        if key is None:
            key = "answer" if row.get("answer") not in (None, "") else ("solution" if "solution" in row else "answer")
        if key not in row:
            raise DataError(f"{loc}: missing field {key!r} (available: {', '.join(sorted(row))})")
        text = text_of(key)
        solution = row.get("solution") if isinstance(row.get("solution"), str) else None
        if key == "solution" or "\\boxed" in text or "\\fbox" in text:
            gold = _boxed_answer(text)
            if gold is None:
                raise DataError(f"{loc}: field {key!r} has no \\boxed{{...}} answer")
            return gold.strip(), solution
        if not text.strip():
            raise DataError(f"{loc}: field {key!r} is empty")
        return text.strip(), solution

    key = a_field or "answer"
    if key not in row:
        raise DataError(f"{loc}: missing field {key!r} (available: {', '.join(sorted(row))})")
    text = text_of(key)
    gold = gsm8k_gold(text)
    if gold is not None:
        if not gold:
            raise DataError(f"{loc}: field {key!r} has nothing after '####'")
        return gold, text
    bare = text.strip()
    if not bare or "\n" in bare or len(bare) > 64:
        raise DataError(f"{loc}: field {key!r} has no '#### <answer>' line and is not a bare answer: {bare[:60]!r}")
    return bare, None


# ------------------------------------------------------------------------------------------
# Pools
# ------------------------------------------------------------------------------------------


@dataclass
class Pools:
    labeled: list[Example]
    unlabeled: list[Example]
    eval: list[Example]

    def summary(self) -> str:
        return f"{len(self.labeled)} labeled, {len(self.unlabeled)} unlabeled, {len(self.eval)} eval"


# Eval problems come from a seed far from any train seed; the dedupe makes disjointness certain.
_EVAL_SEED_OFFSET = 1_000_003


def build_pools(data_cfg: Any, seed: int) -> Pools:
    """labeled = the first labeled_count training rows with a gold answer after a shuffle seeded
    by `seed`; unlabeled = every other row with answer (and solution) dropped; eval = eval_path
    (first eval_count rows, 0 = all) or eval_count synthetic problems disjoint from the train ones."""
    d = data_cfg
    if d.train_path:
        train = load_examples(d.train_path, format=d.format, question_field=d.question_field or None,
                              answer_field=d.answer_field or None, split=d.train_split, subset=d.hf_subset or None)
        if not train:
            raise DataError(f"{d.train_path}: no rows")
    else:
        from rlkd.synthetic import generate_problems

        train = generate_problems(d.synthetic_train_count, seed=d.synthetic_seed,
                                  min_steps=d.synthetic_min_steps, max_steps=d.synthetic_max_steps)
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x7261])).permutation(len(train))
    shuffled = [train[i] for i in order]
    labeled: list[Example] = []
    unlabeled: list[Example] = []
    for ex in shuffled:
        if len(labeled) < d.labeled_count and ex.answer is not None:
            labeled.append(ex)
        else:
            unlabeled.append(ex.unlabeled())
    source = d.train_path or "the synthetic training set"
    if len(labeled) < d.labeled_count:
        raise DataError(f"data.labeled_count = {d.labeled_count} but {source} has only {len(labeled)} rows "
                        "with a gold answer")
    if d.labeled_fraction < 1 and not unlabeled:
        raise DataError(f"data.labeled_fraction = {d.labeled_fraction:g} needs unlabeled prompts, but all "
                        f"{len(labeled)} rows of {source} are labeled (data.labeled_count)")

    if d.eval_path:
        ev = load_examples(d.eval_path, format=d.format, question_field=d.question_field or None,
                           answer_field=d.answer_field or None, split=d.eval_split, subset=d.hf_subset or None,
                           limit=d.eval_count or None)
        if not ev:
            raise DataError(f"{d.eval_path}: no rows, so evaluation would never run (data.eval_path)")
        missing = [e.id for e in ev if e.answer is None]
        if missing:
            raise DataError(f"{d.eval_path}: eval rows need gold answers; {len(missing)} have none (e.g. {missing[0]})")
    elif d.eval_count:
        from rlkd.synthetic import generate_problems

        ev = generate_problems(d.eval_count, seed=d.synthetic_seed + _EVAL_SEED_OFFSET,
                               min_steps=d.synthetic_min_steps, max_steps=d.synthetic_max_steps,
                               exclude={e.question for e in train})
    else:
        ev = []
    return Pools(labeled=labeled, unlabeled=unlabeled, eval=ev)


# ------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------


def _fingerprint(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(e.id.encode())
        h.update(b"\0")
        h.update(e.question.encode())
        h.update(b"\1")
    return h.hexdigest()[:16]


class _Stream:
    """Endless epochs over one pool, each epoch a fresh permutation from (seed, pool, epoch)."""

    def __init__(self, size: int, seed: int, tag: int) -> None:
        self.size, self.seed, self.tag = size, seed, tag
        self.epoch, self.cursor = 0, 0
        self._order: np.ndarray | None = None

    def order(self) -> np.ndarray:
        if self._order is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.tag, self.epoch]))
            self._order = rng.permutation(self.size)
        return self._order

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            if self.cursor == self.size:
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
            out.append(int(self.order()[self.cursor]))
            self.cursor += 1
        return out


def share_of(n: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous share of `n` items (shares differ in size by at most one)."""
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


class PromptSampler:
    """Deterministic, resumable batches of prompts: `n_labeled` labeled then the unlabeled rest.

    n_labeled = round-half-up(labeled_fraction x prompts_per_step). Each pool is read in epochs;
    every epoch is a new permutation derived from (seed, pool, epoch), so the state is just
    (epoch, cursor) per pool. A batch that crosses an epoch boundary may repeat a prompt from
    the end of the previous epoch.

    Data-parallel (rlkd.distributed): every rank draws the same global batch and handles
    `batch[sampler.share]`, its contiguous share of whole prompts (`rank`, `world_size`), so a
    prompt's group never straddles ranks. The state does not depend on the rank or on the number
    of ranks: any rank's state resumes a run on any N.
    """

    _VERSION = 1

    def __init__(self, pools: Pools, *, prompts_per_step: int, labeled_fraction: float, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if prompts_per_step < 1:
            raise DataError(f"prompts_per_step must be ≥ 1, got {prompts_per_step}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if prompts_per_step < world_size:
            raise DataError(f"prompts_per_step {prompts_per_step} is less than the number of ranks ({world_size}): "
                            "every rank needs at least one prompt per step")
        if not 0 <= labeled_fraction <= 1:
            raise DataError(f"labeled_fraction must be in [0, 1], got {labeled_fraction}")
        self.pools = pools
        self.prompts_per_step = prompts_per_step
        self.labeled_fraction = labeled_fraction
        self.seed = seed
        self.n_labeled = labeled_per_batch(prompts_per_step, labeled_fraction)
        self.n_unlabeled = prompts_per_step - self.n_labeled
        if self.n_labeled and not pools.labeled:
            raise DataError(f"labeled_fraction {labeled_fraction:g} asks for {self.n_labeled} labeled prompts per "
                            "batch but the labeled pool is empty")
        if self.n_unlabeled and not pools.unlabeled:
            raise DataError(f"labeled_fraction {labeled_fraction:g} leaves {self.n_unlabeled} unlabeled prompts per "
                            "batch but the unlabeled pool is empty")
        self._labeled = _Stream(len(pools.labeled), seed, 1)
        self._unlabeled = _Stream(len(pools.unlabeled), seed, 2)
        self.batches = 0
        self.share = share_of(prompts_per_step, rank, world_size)

    @property
    def epochs(self) -> dict[str, float]:
        """Fractional epochs consumed per pool (for logging)."""
        return {name: s.epoch + (s.cursor / s.size if s.size else 0.0)
                for name, s in (("labeled", self._labeled), ("unlabeled", self._unlabeled))}

    def next_batch(self) -> list[Example]:
        batch = [self.pools.labeled[i] for i in self._labeled.take(self.n_labeled)]
        batch += [self.pools.unlabeled[i] for i in self._unlabeled.take(self.n_unlabeled)]
        self.batches += 1
        return batch

    def state_dict(self) -> dict:
        return {
            "version": self._VERSION,
            "seed": self.seed,
            "prompts_per_step": self.prompts_per_step,
            "n_labeled": self.n_labeled,
            "batches": self.batches,
            "labeled": {"epoch": self._labeled.epoch, "cursor": self._labeled.cursor, "size": self._labeled.size,
                        "fingerprint": _fingerprint(self.pools.labeled)},
            "unlabeled": {"epoch": self._unlabeled.epoch, "cursor": self._unlabeled.cursor,
                          "size": self._unlabeled.size, "fingerprint": _fingerprint(self.pools.unlabeled)},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != self._VERSION:
            raise DataError(f"sampler state: unsupported version {state.get('version')!r}")
        for key, mine in (("seed", self.seed), ("prompts_per_step", self.prompts_per_step),
                          ("n_labeled", self.n_labeled)):
            if state.get(key) != mine:
                raise DataError(f"sampler state: {key} was {state.get(key)!r} in the checkpoint, {mine!r} now")
        for name, stream, pool in (("labeled", self._labeled, self.pools.labeled),
                                   ("unlabeled", self._unlabeled, self.pools.unlabeled)):
            s = state[name]
            if s["size"] != stream.size or s["fingerprint"] != _fingerprint(pool):
                raise DataError(f"sampler state: the {name} pool changed since the checkpoint "
                                f"({s['size']} examples then, {stream.size} now)")
            if not (0 <= s["cursor"] <= stream.size) or s["epoch"] < 0:
                raise DataError(f"sampler state: bad {name} position {s['epoch']}:{s['cursor']}")
        for name, stream in (("labeled", self._labeled), ("unlabeled", self._unlabeled)):
            stream.epoch, stream.cursor, stream._order = int(state[name]["epoch"]), int(state[name]["cursor"]), None
        self.batches = int(state["batches"])
