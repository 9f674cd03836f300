"""rlkd.pack_judge_prompts: invariants, the pure-Python twin, errors, and a real BPE tokenizer.

Conventions under test: sample i = pieces[0] + fields[0][i] + pieces[1] + ... + pieces[k];
overlong rows are cut in `truncate_field` (default: last field) keeping its END by default;
rows sorted longest first; rows x width <= max_tokens_per_batch (varlen: total tokens <= budget);
left padding puts every row's last token at width - 1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlkd
from rlkd import InvalidArgumentError, LengthMismatchError, PackingError

BENCH = Path(__file__).resolve().parent.parent / "benches" / "bench_kernels.py"
_spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
assert _spec is not None and _spec.loader is not None
bench_kernels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_kernels)


def expected_row(pieces, fields, i, max_len, truncate_field=-1, truncation="keep_end"):
    """Sample i rendered and truncated, written independently of both implementations."""
    parts = [list(field[i]) for field in fields]
    excess = sum(map(len, pieces)) + sum(map(len, parts)) - max_len
    cut = truncate_field % len(fields)
    if excess > 0:
        kept = len(parts[cut]) - excess
        parts[cut] = parts[cut][len(parts[cut]) - kept :] if truncation == "keep_end" else parts[cut][:kept]
    row = list(pieces[0])
    for part, piece in zip(parts, pieces[1:]):
        row += part + list(piece)
    return row


def rows_of(batch):
    """Each row's real tokens, in row order."""
    if batch.cu_seqlens is not None:
        cu = batch.cu_seqlens
        return [batch.input_ids[cu[r] : cu[r + 1]].tolist() for r in range(len(batch))]
    return [ids[mask == 1].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask)]


token_lists = st.lists(st.integers(0, 1000), max_size=15)


@st.composite
def packing_inputs(draw):
    num_fields = draw(st.integers(1, 3))
    n = draw(st.integers(0, 12))
    pieces = draw(st.lists(token_lists, min_size=num_fields + 1, max_size=num_fields + 1))
    fields = draw(st.lists(st.lists(token_lists, min_size=n, max_size=n), min_size=num_fields, max_size=num_fields))
    # Keep every row non-empty and truncatable: give each sample a long enough last field.
    fields[-1] = [ids + [7] * 30 for ids in fields[-1]]
    # max_len leaves room for every sample's template and non-truncated fields (else PackingError,
    # tested separately) but is often short enough to force truncation.
    fixed = sum(map(len, pieces)) + max((sum(len(f[i]) for f in fields[:-1]) for i in range(n)), default=0)
    max_len = draw(st.integers(fixed + 1, fixed + 60))
    budget = draw(st.integers(max_len, 3 * max_len))
    options = dict(
        max_tokens_per_batch=budget,
        max_len=max_len,
        pad_id=draw(st.integers(-1, 3)),
        padding_side=draw(st.sampled_from(["left", "right"])),
        truncation=draw(st.sampled_from(["keep_end", "keep_start"])),
        varlen=draw(st.booleans()),
        sort_by_length=draw(st.booleans()),
    )
    return pieces, fields, options


@settings(max_examples=300, deadline=None)
@given(packing_inputs(), st.booleans())
def test_invariants_and_agreement_with_pure_python(inputs, as_arrays):
    pieces, fields, options = inputs
    if as_arrays:  # numpy int64 arrays and lists must give the same result
        fields = [[np.asarray(ids, dtype=np.int64) for ids in field] for field in fields]
    batches = rlkd.pack_judge_prompts(pieces, fields, **options)
    n = len(fields[0])

    seen = [b.sample_index for b in batches]
    assert sorted(np.concatenate(seen).tolist() if seen else []) == list(range(n))  # each sample exactly once
    lengths_in_order = []
    for batch in batches:
        assert all(a is None or a.dtype == (np.int32 if name == "cu_seqlens" else np.int64)
                   for name, a in [("input_ids", batch.input_ids), ("cu_seqlens", batch.cu_seqlens), ("last_index", batch.last_index)])
        for row, sample in zip(rows_of(batch), batch.sample_index):
            assert row == expected_row(pieces, fields, sample, options["max_len"], truncation=options["truncation"])
            lengths_in_order.append(len(row))
        if options["varlen"]:
            assert batch.attention_mask is None
            assert batch.input_ids.size <= options["max_tokens_per_batch"]
            assert np.array_equal(batch.last_index, batch.cu_seqlens[1:] - 1)
        else:
            rows, width = batch.input_ids.shape
            assert rows * width <= options["max_tokens_per_batch"]
            assert width == batch.lengths.max()
            ids, mask = batch.input_ids, batch.attention_mask
            assert np.all(ids[mask == 0] == options["pad_id"])
            if options["padding_side"] == "left":
                assert np.all(batch.last_index == width - 1)
            assert np.all(mask[np.arange(rows), batch.last_index] == 1)
            assert batch.num_padding_tokens == int((mask == 0).sum())
    if options["sort_by_length"]:
        assert lengths_in_order == sorted(lengths_in_order, reverse=True)
    for numpy_rows in (False, True):
        python = bench_kernels.python_pack_judge_prompts(pieces, fields, numpy_rows=numpy_rows, **options)
        assert bench_kernels.same_batches(batches, python)


def test_keep_end_keeps_the_answer():
    pieces = [[1, 1], [2], [3]]
    question, response = [10, 11], list(range(100, 120))
    (batch,) = rlkd.pack_judge_prompts(pieces, [[question], [response]], max_tokens_per_batch=64, max_len=15, pad_id=0)
    # 4 template + 2 question tokens leave 9 for the response: its last 9 tokens.
    assert batch.input_ids.tolist() == [[1, 1, 10, 11, 2, *range(111, 120), 3]]
    assert batch.num_truncated == 1
    (batch,) = rlkd.pack_judge_prompts(
        pieces, [[question], [response]], max_tokens_per_batch=64, max_len=15, pad_id=0, truncation="keep_start"
    )
    assert batch.input_ids.tolist() == [[1, 1, 10, 11, 2, *range(100, 109), 3]]
    # truncate the question instead (field 0)
    (batch,) = rlkd.pack_judge_prompts(
        pieces, [[list(range(50, 60))], [[7]]], max_tokens_per_batch=64, max_len=8, pad_id=0, truncate_field=0
    )
    assert batch.input_ids.tolist() == [[1, 1, 57, 58, 59, 2, 7, 3]]


def test_budget_splits_batches_longest_first_and_maps_back():
    fields = [[[5] * n for n in (3, 9, 6, 9, 1)]]
    # lengths 5, 11, 8, 11, 3; a budget of 24 fits 2 x 11 then 3 x 8
    batches = rlkd.pack_judge_prompts([[1], [2]], fields, max_tokens_per_batch=24, max_len=11, pad_id=0)
    assert [b.sample_index.tolist() for b in batches] == [[1, 3], [2, 0, 4]]
    assert [b.input_ids.shape for b in batches] == [(2, 11), (3, 8)]
    varlen = rlkd.pack_judge_prompts([[1], [2]], fields, max_tokens_per_batch=24, max_len=11, pad_id=0, varlen=True)
    assert [b.sample_index.tolist() for b in varlen] == [[1, 3], [2, 0, 4]]
    assert varlen[1].cu_seqlens.tolist() == [0, 8, 13, 16]
    assert varlen[1].position_ids.tolist() == [*range(8), *range(5), *range(3)]
    unsorted = rlkd.pack_judge_prompts([[1], [2]], fields, max_tokens_per_batch=22, max_len=11, pad_id=0, sort_by_length=False)
    assert np.concatenate([b.sample_index for b in unsorted]).tolist() == [0, 1, 2, 3, 4]


def test_right_padding():
    (batch,) = rlkd.pack_judge_prompts([[1], [2]], [[[5, 5], [6]]], max_tokens_per_batch=64, max_len=8, pad_id=-1, padding_side="right")
    assert batch.input_ids.tolist() == [[1, 5, 5, 2], [1, 6, 2, -1]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch.last_index.tolist() == [3, 2]
    assert "rows=2" in repr(batch)


def test_errors():
    ok = dict(max_tokens_per_batch=64, max_len=8, pad_id=0)
    with pytest.raises(LengthMismatchError, match="fields\\[1\\] has 1 samples but fields\\[0\\] has 2"):
        rlkd.pack_judge_prompts([[1], [2], [3]], [[[5], [6]], [[7]]], **ok)
    with pytest.raises(LengthMismatchError, match="3 pieces"):
        rlkd.pack_judge_prompts([[1], [2], [3]], [[[5]]], **ok)
    with pytest.raises(PackingError, match="max_len 65 exceeds max_tokens_per_batch 64"):
        rlkd.pack_judge_prompts([[1], [2]], [[[5]]], max_tokens_per_batch=64, max_len=65, pad_id=0)
    with pytest.raises(PackingError, match=r"sample 1 has 12 tokens > max_len 8; even with field 1 \(1 tokens\) emptied it has 11"):
        rlkd.pack_judge_prompts([[1] * 3, [2], [3]], [[[], [9] * 6], [[5], [5]]], **ok)
    with pytest.raises(PackingError, match="truncation is \"error\""):
        rlkd.pack_judge_prompts([[1], [2]], [[[5] * 20]], truncation="error", **ok)
    with pytest.raises(PackingError, match="sample 0 is empty"):
        rlkd.pack_judge_prompts([[], []], [[[]]], **ok)
    with pytest.raises(InvalidArgumentError, match="left, right"):
        rlkd.pack_judge_prompts([[1], [2]], [[[5]]], padding_side="middle", **ok)
    with pytest.raises(InvalidArgumentError, match="keep_end, keep_start, error"):
        rlkd.pack_judge_prompts([[1], [2]], [[[5]]], truncation="middle", **ok)
    with pytest.raises(InvalidArgumentError, match="truncate_field 1"):
        rlkd.pack_judge_prompts([[1], [2]], [[[5]]], truncate_field=1, **ok)
    with pytest.raises(InvalidArgumentError, match="max_len must be >= 0"):
        rlkd.pack_judge_prompts([[1], [2]], [[[5]]], max_tokens_per_batch=64, max_len=-3, pad_id=0)
    with pytest.raises(InvalidArgumentError, match="fields\\[0\\]\\[1\\]"):
        rlkd.pack_judge_prompts([[1], [2]], [[[5], ["x"]]], **ok)
    with pytest.raises(InvalidArgumentError, match="integers"):
        rlkd.pack_judge_prompts([[1], [2]], [[np.array([1.5])]], **ok)
    assert rlkd.pack_judge_prompts([[1], [2]], [[]], **ok) == []


# ---------------------------------------------------------------------------------------------
# A real tokenizer: GPT-2-style byte-level BPE trained here, wrapped as a transformers tokenizer.
# TODO(real model): the same check through a real model's chat template comes with the models work.

CORPUS_TEXT = """Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.
How many clips did Natalia sell altogether in April and May? Natalia sold 48/2 = 24 clips in May.
Natalia sold 48+24 = 72 clips altogether in April and May. #### 72
Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.
How much did she earn? Weng earns 12/60 = $0.2 per minute. Working 50 minutes, she earned 0.2 x 50 = $10.
The answer is \\boxed{10}. Is the solution correct? Answer Yes or No. Ünïcödé — ∑ x² ≥ 0 ✓
"""


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    special = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS_TEXT.splitlines() * 20, trainer=trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tokenizer.save(str(path))
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), eos_token="<|endoftext|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )


@pytest.mark.parametrize("varlen", [False, True])
def test_packed_rows_decode_to_the_rendered_prompt(bpe_tokenizer, varlen):
    tok = bpe_tokenizer
    piece_texts = [
        "<|im_start|>system\nYou grade math solutions.<|im_end|>\n<|im_start|>user\nQuestion: ",
        "\nProposed solution: ",
        "\nIs the solution correct? Answer Yes or No.<|im_end|>\n<|im_start|>assistant\n",
    ]
    questions = [
        "Natalia sold clips to 48 of her friends in April. How many clips?",
        "Weng earns $12 an hour. How much did she earn?",
        "Ünïcödé question: is ∑ x² ≥ 0?",
    ]
    responses = [
        "Natalia sold 48/2 = 24 clips in May. #### 72",
        "Weng earns 12/60 = $0.2 per minute. The answer is \\boxed{10}.",
        "Yes ✓ — squares are non-negative.",
    ]

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    pieces = [ids(p) for p in piece_texts]
    fields = [[ids(q) for q in questions], [ids(r) for r in responses]]
    batches = rlkd.pack_judge_prompts(
        pieces, fields, max_tokens_per_batch=4096, max_len=1024, pad_id=tok.pad_token_id, varlen=varlen
    )
    decoded = {}
    for batch in batches:
        for row, sample in zip(rows_of(batch), batch.sample_index):
            decoded[int(sample)] = tok.decode(row, skip_special_tokens=False)
            if not varlen:  # the judge reads the last position: it is the prompt's last token
                assert row[-1] == pieces[2][-1]
    for i, (q, r) in enumerate(zip(questions, responses)):
        assert decoded[i] == piece_texts[0] + q + piece_texts[1] + r + piece_texts[2]

    # Truncation keeps the end of the response, where the answer is.
    long_response = "Let me think step by step. " * 40 + "The answer is \\boxed{10}."
    fields = [[ids(questions[1])], [ids(long_response)]]
    max_len = len(pieces[0]) + len(pieces[1]) + len(pieces[2]) + len(fields[0][0]) + 20
    (batch,) = rlkd.pack_judge_prompts(pieces, fields, max_tokens_per_batch=4096, max_len=max_len, pad_id=0)
    text = tok.decode(rows_of(batch)[0], skip_special_tokens=False)
    kept = tok.decode(fields[1][0][-20:])
    assert batch.num_truncated == 1 and batch.input_ids.shape == (1, max_len)
    assert text == piece_texts[0] + questions[1] + piece_texts[1] + kept + piece_texts[2]
    assert kept.endswith("The answer is \\boxed{10}.")
