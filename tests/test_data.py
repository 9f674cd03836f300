"""Loaders (jsonl/json/parquet/datasets), GSM8K and MATH formats, bad rows, pools, the sampler."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlkd import _core
from rlkd.config import loads_config
from rlkd.data import (
    DataError,
    Example,
    Pools,
    PromptSampler,
    build_pools,
    labeled_per_batch,
    last_boxed,
    load_examples,
)

# Shipped with the project, so every clone runs the real-data tests: GSM8K inside the package
# (builtin:gsm8k/..., python/rlkd/datasets/), MATH-500 as a test fixture (tests/data/README.md).
GSM8K_TRAIN, GSM8K_TEST = "builtin:gsm8k/train", "builtin:gsm8k/test"
MATH500 = Path(__file__).resolve().parent / "data" / "math500_test.jsonl.gz"


def math500_rows() -> list[dict]:
    with gzip.open(MATH500, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---- real data -----------------------------------------------------------------------------


def test_gsm8k_train_and_test():
    train = load_examples(GSM8K_TRAIN)
    test = load_examples(GSM8K_TEST, format="gsm8k")
    assert (len(train), len(test)) == (7473, 1319)
    assert train[0].answer == "72" and train[0].question.startswith("Natalia sold clips")
    assert train[0].solution.endswith("#### 72")
    assert all(e.answer and "####" not in e.answer and e.answer == e.answer.strip() for e in train)
    assert any("," in e.answer for e in train)  # commas kept as written ("1,000"); the verifier handles them
    assert len({e.id for e in train}) == len(train)
    assert not {e.question for e in train} & {e.question for e in test}
    assert [e.answer for e in load_examples(GSM8K_TRAIN, limit=3)] == [e.answer for e in train[:3]]


def test_math500_answer_field_and_boxed_solution(tmp_path):
    examples = load_examples(MATH500)
    assert len(examples) == 500
    assert examples[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and examples[0].id == "test/precalculus/807.json"
    rows = math500_rows()
    # Without the `answer` field the gold is the last \boxed{} of the solution: it must agree.
    solution_only = write_jsonl(tmp_path / "m.jsonl", [{"problem": r["problem"], "solution": r["solution"]} for r in rows])
    from_boxed = load_examples(solution_only)
    assert [e.answer for e in from_boxed] == [r["answer"] for r in rows]
    assert [last_boxed(r["solution"]) for r in rows] == [r["answer"] for r in rows]  # the pure-Python fallback


@pytest.mark.skipif(not hasattr(_core, "extract_answer"), reason="rlkd._core.extract_answer not built yet")
def test_math500_core_extractor_matches_the_fallback():
    rows = math500_rows()
    assert [_core.extract_answer(r["solution"]) for r in rows] == [last_boxed(r["solution"]) for r in rows]


def test_last_boxed():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{ok} then \\boxed{unbalanced") == "ok"
    assert last_boxed("\\fbox{7}") == "7" and last_boxed("no box") is None and last_boxed("\\boxed{}") is None


# ---- other sources -------------------------------------------------------------------------


def test_parquet_with_field_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["What is 2+3?", "What is 4*5?"], "gold": [5, 20], "extra": ["x", "y"]})
    pq.write_table(table, tmp_path / "d.parquet")
    ex = load_examples(tmp_path / "d.parquet", question_field="prompt", answer_field="gold")
    assert [(e.question, e.answer) for e in ex] == [("What is 2+3?", "5"), ("What is 4*5?", "20")]
    with pytest.raises(DataError, match=r"d\.parquet: row 0: missing field 'question' \(available: extra, gold, prompt\)"):
        load_examples(tmp_path / "d.parquet", format="gsm8k")


def test_hf_dataset_on_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"question": ["Q1?", "Q2?", "Q3?"], "answer": ["work\n#### 1", "#### 2", "3"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    ex = load_examples(tmp_path / "single")
    assert [e.answer for e in ex] == ["1", "2", "3"] and ex[2].solution is None
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                               "test": datasets.Dataset.from_dict({"problem": ["P?"], "answer": ["\\frac{1}{2}"]})})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert len(load_examples(tmp_path / "dict")) == 3  # default split: train
    assert load_examples(tmp_path / "dict", split="test")[0].answer == "\\frac{1}{2}"
    with pytest.raises(DataError, match=r"no split 'validation'; available: train, test"):
        load_examples(tmp_path / "dict", split="validation")
    # A plain directory of data files goes through load_dataset(path).
    plain = tmp_path / "plain"
    plain.mkdir()
    write_jsonl(plain / "train.jsonl", [{"question": "Q?", "answer": "#### 9"}])
    assert load_examples(plain)[0].answer == "9"


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataError, match=r"hf:openai/gsm8k: cannot load from the Hugging Face hub.*local file"):
        load_examples("hf:openai/gsm8k", subset="main")


def test_json_array_and_unlabeled_sources(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"data": [{"question": "Q?", "answer": "#### 4", "id": 17}]}))
    assert load_examples(tmp_path / "a.json") == [Example(id="17", question="Q?", answer="4")]
    unl = write_jsonl(tmp_path / "u.jsonl", [{"question": "Q1?"}, {"question": "Q2?"}])
    assert [e.answer for e in load_examples(unl)] == [None, None]


# ---- bad rows ------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,pattern", [
    (['{"question": "Q?", "answer": "#### 1"}', '{"question": "Q2?", "answer": '], r"b\.jsonl:2: invalid JSON at line 2"),
    ([{"question": "Q?", "answer": "#### 1"}, {"q": "Q?", "answer": "#### 1"}],
     r"b\.jsonl:2: line 2: missing field 'question' \(available: answer, q\)"),
    ([{"question": "", "answer": "#### 1"}], r"b\.jsonl:1: line 1: field 'question' must be a non-empty string"),
    (["[1, 2]"], r"b\.jsonl:1: line 1: expected an object"),
    ([{"question": "Q?", "answer": "a long worked solution\nwithout the final marker"}], r"no '#### <answer>' line"),
    ([{"question": "Q?", "answer": "x ####  "}], r"nothing after '####'"),
    ([{"question": "Q?", "answer": True}], r"field 'answer' must be a string or a number"),
    ([{"problem": "P?", "solution": "no box here"}], r"b\.jsonl:1: line 1: field 'solution' has no \\boxed"),
    ([{"text": "P?"}], r"cannot tell the format from the fields \['text'\]"),
])
def test_bad_rows_name_file_and_line(tmp_path, rows, pattern):
    path = write_jsonl(tmp_path / "b.jsonl", rows)
    with pytest.raises(DataError, match=pattern):
        load_examples(path)


def test_each_row_says_whether_it_is_labeled(tmp_path):
    # Row 1 unlabeled must not drop the gold answers of later rows (and vice versa).
    rows = [{"question": "Q0?"}, {"question": "Q1?", "answer": "#### 1"}, {"question": "Q2?", "answer": ""},
            {"question": "Q3?", "answer": "#### 3"}]
    assert [e.answer for e in load_examples(write_jsonl(tmp_path / "m.jsonl", rows))] == [None, "1", None, "3"]
    math_rows = [{"problem": "P0?"}, {"problem": "P1?", "solution": r"so \boxed{7}"}]
    assert [e.answer for e in load_examples(write_jsonl(tmp_path / "p.jsonl", math_rows))] == [None, "7"]
    # A named answer field is required in every row.
    with pytest.raises(DataError, match=r"m\.jsonl:1: line 1: missing field 'answer'"):
        load_examples(tmp_path / "m.jsonl", answer_field="answer")


def test_binary_files_are_named(tmp_path):
    (tmp_path / "bin.jsonl").write_bytes(b'{"question": "Q?", "answer": "#### 1"}\n\xff\xfe\x00\x81garbage\n')
    with pytest.raises(DataError, match=r"bin\.jsonl:2: not UTF-8 text"):
        load_examples(tmp_path / "bin.jsonl")
    (tmp_path / "bin.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(DataError, match=r"bin\.json: not UTF-8 text"):
        load_examples(tmp_path / "bin.json")


def test_an_empty_eval_file_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"question": f"Q{i}?", "answer": f"#### {i}"} for i in range(8)])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows, so evaluation would never run"):
        build_pools(data_cfg(train_path=str(train), eval_path=str(tmp_path / "empty.jsonl"), labeled_count=2), seed=0)


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_examples(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file type '.csv'"):
        load_examples(tmp_path / "x.csv")
    (tmp_path / "bad.json").write_text('[{"question": "Q?",\n "answer": }]')
    with pytest.raises(DataError, match=r"bad\.json:2: invalid JSON at line 2"):
        load_examples(tmp_path / "bad.json")
    with pytest.raises(DataError, match="unknown format"):
        load_examples(tmp_path / "bad.json", format="csv")


# ---- pools ---------------------------------------------------------------------------------


def data_cfg(**overrides):
    overrides = {"train_path": "", "eval_path": "", **overrides}  # the synthetic generator unless named
    return loads_config("", overrides=[f"data.{k}={v!r}" if isinstance(v, str) else f"data.{k}={v}"
                                       for k, v in overrides.items()]).data


def test_pools_from_synthetic_data_are_seeded_and_disjoint():
    cfg = data_cfg(synthetic_train_count=40, labeled_count=10, eval_count=8)
    pools = build_pools(cfg, seed=3)
    assert (len(pools.labeled), len(pools.unlabeled), len(pools.eval)) == (10, 30, 8)
    assert all(e.answer is not None and e.solution for e in pools.labeled)
    assert all(e.answer is None and e.solution is None for e in pools.unlabeled)
    assert all(e.answer is not None for e in pools.eval)
    train_q = {e.question for e in pools.labeled + pools.unlabeled}
    assert len(train_q) == 40 and not train_q & {e.question for e in pools.eval}
    again = build_pools(cfg, seed=3)
    assert [e.id for e in again.labeled] == [e.id for e in pools.labeled]
    assert [e.id for e in build_pools(cfg, seed=4).labeled] != [e.id for e in pools.labeled]


def test_pools_from_gsm8k_files():
    cfg = data_cfg(train_path=GSM8K_TRAIN, eval_path=GSM8K_TEST,
                   labeled_count=100, eval_count=50)
    pools = build_pools(cfg, seed=0)
    assert (len(pools.labeled), len(pools.unlabeled), len(pools.eval)) == (100, 7373, 50)
    assert pools.eval[0].question.startswith("Janet")  # the first rows of the test split, in order
    with pytest.raises(DataError, match="labeled_count = 8000 but .* has only 7473 rows with a gold answer"):
        build_pools(data_cfg(train_path=GSM8K_TRAIN, labeled_count=8000), seed=0)


def test_pools_need_unlabeled_rows_when_the_fraction_asks(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": f"Q{i}?", "answer": f"#### {i}"} for i in range(4)])
    with pytest.raises(DataError, match="needs unlabeled prompts"):
        build_pools(data_cfg(train_path=str(path), labeled_count=4), seed=0)


# ---- sampler -------------------------------------------------------------------------------


def make_pools(n_lab=5, n_unl=7) -> Pools:
    lab = [Example(f"l{i}", f"L{i}?", str(i)) for i in range(n_lab)]
    unl = [Example(f"u{i}", f"U{i}?", None) for i in range(n_unl)]
    return Pools(labeled=lab, unlabeled=unl, eval=[])


@pytest.mark.parametrize("pps,frac,n_lab", [(4, 0.5, 2), (3, 0.5, 2), (5, 0.3, 2), (2, 0.0, 0), (2, 1.0, 2), (8, 0.25, 2)])
def test_sampler_ratio_per_batch(pps, frac, n_lab):
    assert labeled_per_batch(pps, frac) == n_lab
    sampler = PromptSampler(make_pools(), prompts_per_step=pps, labeled_fraction=frac, seed=0)
    for _ in range(6):
        batch = sampler.next_batch()
        assert len(batch) == pps
        assert [e.answer is not None for e in batch] == [True] * n_lab + [False] * (pps - n_lab)


def test_sampler_covers_each_pool_once_per_epoch_and_reshuffles():
    sampler = PromptSampler(make_pools(6, 12), prompts_per_step=4, labeled_fraction=0.5, seed=1)
    seen = [e.id for _ in range(6) for e in sampler.next_batch()]
    labeled, unlabeled = [s for s in seen if s[0] == "l"], [s for s in seen if s[0] == "u"]
    assert sorted(labeled[:6]) == sorted(labeled[6:]) == [f"l{i}" for i in range(6)]  # two epochs
    assert labeled[:6] != labeled[6:]  # reshuffled (fixed seed: deterministic)
    assert sorted(unlabeled) == sorted(f"u{i}" for i in range(12))
    assert sampler.epochs == {"labeled": 2.0, "unlabeled": 1.0}


def test_sampler_is_deterministic_and_resumes_exactly():
    def run(n, sampler):
        return [[e.id for e in sampler.next_batch()] for _ in range(n)]

    pools = make_pools()
    full = run(20, PromptSampler(pools, prompts_per_step=3, labeled_fraction=0.34, seed=7))
    first = PromptSampler(pools, prompts_per_step=3, labeled_fraction=0.34, seed=7)
    head = run(9, first)
    state = json.loads(json.dumps(first.state_dict()))  # JSON-serialisable
    resumed = PromptSampler(pools, prompts_per_step=3, labeled_fraction=0.34, seed=7)
    resumed.load_state_dict(state)
    assert head + run(11, resumed) == full
    assert run(20, PromptSampler(pools, prompts_per_step=3, labeled_fraction=0.34, seed=8)) != full


def test_sampler_rejects_incompatible_state_and_empty_pools():
    pools = make_pools()
    state = PromptSampler(pools, prompts_per_step=4, labeled_fraction=0.5, seed=0).state_dict()
    with pytest.raises(DataError, match="seed was 0 in the checkpoint, 1 now"):
        PromptSampler(pools, prompts_per_step=4, labeled_fraction=0.5, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="the labeled pool changed"):
        PromptSampler(make_pools(6, 7), prompts_per_step=4, labeled_fraction=0.5, seed=0).load_state_dict(state)
    with pytest.raises(DataError, match="labeled pool is empty"):
        PromptSampler(make_pools(0, 7), prompts_per_step=4, labeled_fraction=0.5, seed=0)
    with pytest.raises(DataError, match="unlabeled pool is empty"):
        PromptSampler(make_pools(5, 0), prompts_per_step=4, labeled_fraction=0.5, seed=0)
