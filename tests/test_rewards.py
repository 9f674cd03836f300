import numpy as np
import pytest
import torch

from rlkd import _core
from rlkd.rewards import EQUAL, NO_ANSWER, NOT_EQUAL, UNLABELED, RewardWeights, VRValues, mix_rewards, verifiable_rewards

nan = float("nan")


def test_mix_weights_labeled_and_renormalises_unlabeled():
    w = RewardWeights(vr=0.5, judge=0.25, rerank=0.25)
    labeled = np.array([True, False])
    vr = np.array([1.0, nan], dtype=np.float32)
    judge = np.array([0.2, 0.8], dtype=np.float32)
    rerank = np.array([0.6, 0.4], dtype=np.float32)
    total = mix_rewards(w, labeled, vr=vr, judge=judge, rerank=rerank)
    assert total.dtype == np.float32
    assert total[0] == pytest.approx(0.5 * 1.0 + 0.25 * 0.2 + 0.25 * 0.6)
    # unlabeled: VR absent by design, the judge and reranker weights renormalised to 0.5 / 0.5
    assert total[1] == pytest.approx((0.25 * 0.8 + 0.25 * 0.4) / 0.5)


def test_mix_missing_value_excludes_sample_instead_of_zero():
    w = RewardWeights(vr=0.5, judge=0.5, rerank=0.0)
    labeled = np.array([True, True, False])
    vr = np.array([1.0, nan, nan], dtype=np.float32)  # second: verifier Unknown
    judge = np.array([nan, 0.9, 0.7], dtype=np.float32)  # first: judge abstained
    total = mix_rewards(w, labeled, vr=vr, judge=judge)
    assert np.isnan(total[0]) and np.isnan(total[1])
    assert total[2] == pytest.approx(0.7)


def test_mix_rlvr_only_leaves_unlabeled_without_reward():
    total = mix_rewards(RewardWeights(1.0, 0.0, 0.0), np.array([True, False]), vr=np.array([0.1, nan]))
    assert total[0] == pytest.approx(0.1) and np.isnan(total[1])


def test_mix_needs_values_for_weighted_source():
    with pytest.raises(ValueError, match="non-zero weight"):
        mix_rewards(RewardWeights(0.0, 1.0, 0.0), np.array([True]))


def test_verifiable_rewards_reft_values_and_unlabeled():
    golds = ["18", "18", "18", None]
    responses = ["so #### 18", "The answer is 17.", "I do not know.", "The answer is 3."]
    rewards, verdicts = verifiable_rewards(golds, responses, VRValues(correct=1.0, wrong=0.1, no_answer=0.0))
    assert verdicts.tolist() == [EQUAL, NOT_EQUAL, NO_ANSWER, UNLABELED]
    assert rewards[:3].tolist() == pytest.approx([1.0, 0.1, 0.0])
    assert np.isnan(rewards[3])
    assert int(_core.Verdict.Equal) == EQUAL


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, tiny_model_path):
    """A real (randomly initialised) sequence-classification model with SmolLM2's tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("reranker")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=2)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_model_path).eos_token_id
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(out)
    return out


def test_reranker_probabilities_do_not_depend_on_batching(tiny_classifier):
    from rlkd.models import load_sequence_classifier
    from rlkd.rewards import Reranker

    model, tok = load_sequence_classifier(str(tiny_classifier), dtype="float32", progress=False)
    questions = ["What is 2 + 3?", "How many legs do 3 cats have?", "What is 10 / 4?"]
    responses = ["5", "Each cat has 4 legs, so 3 * 4 = 12. The answer is 12.", "2.5"]
    batched = Reranker(model, tok, batch_size=3).score(questions, responses)
    alone = Reranker(model, tok, batch_size=1).score(questions, responses)
    assert batched.dtype == np.float32 and ((batched > 0) & (batched < 1)).all()
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-6)


def test_truncated_response_without_marker_is_no_answer_not_wrong():
    golds = ["18", "18", "18", "18", None]
    responses = [
        "First 3 + 4 = 7, then 7 * 2 = 14 and",  # cut mid-sentence: its last number is not an answer
        "So the total is \\boxed{18} and",  # cut, but the final answer was stated explicitly
        "First 3 + 4 = 7, then 7 * 2 = 14.",  # finished: the last-number fallback still applies
        "The answer is 17. Let me also",  # cut after an explicit (wrong) answer
        "cut and unlabeled 3",
    ]
    finished = [False, False, True, False, False]
    values = VRValues(correct=1.0, wrong=0.1, no_answer=0.0)
    rewards, verdicts = verifiable_rewards(golds, responses, values, finished=finished)
    assert verdicts.tolist() == [NO_ANSWER, EQUAL, NOT_EQUAL, NOT_EQUAL, UNLABELED]
    assert rewards[:4].tolist() == pytest.approx([0.0, 1.0, 0.1, 0.1])
    # Without `finished` (the rule off) the truncated text's last number is taken as its answer.
    _, old = verifiable_rewards(golds, responses, values)
    assert old[0] == NOT_EQUAL


def test_has_final_answer_is_strict_extraction():
    from rlkd.rewards import has_final_answer

    assert has_final_answer(["x \\boxed{3}", "#### 4", "The answer is 5.", "3 + 4 = 7", ""]).tolist() == [
        True, True, True, False, False]


def test_a_comment_on_the_solution_earns_no_answer_not_wrong():
    """ "The answer is correct." states no answer: VR's no_answer value, not the answered-but-wrong one."""
    from rlkd.rewards import has_final_answer

    responses = ["The answer is correct.", "Final Answer: Yes", "I got 18. The answer is correct."]
    assert has_final_answer(responses).tolist() == [False, False, False]  # strict: no stated answer
    rewards, verdicts = verifiable_rewards(["18"] * 3, responses, VRValues())
    assert verdicts.tolist() == [NO_ANSWER, NO_ANSWER, EQUAL]


# A mixed batch: rows of very different lengths, so all but the longest are padded.
MIXED_Q = ["What is 2 + 3?", "A train travels 60 km in 1.5 hours. What is its average speed in km/h?", "2*2?"]
MIXED_R = ["5", "Speed is distance over time: 60 / 1.5 = 40. The answer is \\boxed{40}.", "4"]


def _save_classifier(model, tokenizer, out):
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_deberta(tmp_path_factory, smollm2_path):
    """A tiny random DeBERTa-v2 classifier (pools position 0) with SmolLM2's real tokenizer."""
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    config = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=512, num_labels=2,
                             pad_token_id=tok.pad_token_id, relative_attention=True, position_buckets=32,
                             pos_att_type=["p2c", "c2p"])
    torch.manual_seed(0)
    return _save_classifier(DebertaV2ForSequenceClassification(config).eval(), tok, tmp_path_factory.mktemp("deberta"))


def _alone_and_mixed(path):
    from rlkd.models import load_sequence_classifier
    from rlkd.rewards import Reranker

    model, tok = load_sequence_classifier(str(path), dtype="float32", progress=False)
    mixed = Reranker(model, tok, batch_size=len(MIXED_Q)).score(MIXED_Q, MIXED_R)
    alone = np.array([Reranker(model, tok, batch_size=1).score([q], [r])[0] for q, r in zip(MIXED_Q, MIXED_R)])
    return alone, mixed


def test_encoder_reranker_reads_a_real_token_in_every_row_of_a_mixed_batch(tiny_deberta):
    # DeBERTa pools position 0: with left padding every row but the longest would be scored on a pad token.
    alone, mixed = _alone_and_mixed(tiny_deberta)
    assert len(set(np.round(alone, 6))) == len(alone)  # the rows really score differently
    np.testing.assert_allclose(mixed, alone, rtol=1e-4, atol=1e-6)


def test_decoder_reranker_row_scores_the_same_alone_and_in_a_mixed_batch(tiny_classifier):
    alone, mixed = _alone_and_mixed(tiny_classifier)
    np.testing.assert_allclose(mixed, alone, rtol=1e-4, atol=1e-6)


def test_decoder_reranker_reads_the_last_real_token_even_when_it_is_the_pad_id(tiny_classifier):
    # The pad token is <|im_end|>; a student who writes it as text gets that id back from the
    # reranker's tokenizer. A causal classifier must still read the row's last token, so appending
    # it changes the score (transformers' own pooling skips every pad id and reads the token before).
    from rlkd.models import load_sequence_classifier
    from rlkd.rewards import Reranker

    model, tok = load_sequence_classifier(str(tiny_classifier), dtype="float32", progress=False)
    assert tok.padding_side == "right"
    pad_text = tok.pad_token
    reranker = Reranker(model, tok, batch_size=2)
    plain, with_pad = reranker.score(["What is 2 + 3?"] * 2, ["The answer is 5.", "The answer is 5." + pad_text])
    assert abs(plain - with_pad) > 1e-6
    # ... and in a batch with a longer row (right-padded with that same id) it scores as alone.
    batched = reranker.score(["What is 2 + 3?", MIXED_Q[1]], ["The answer is 5." + pad_text, MIXED_R[1]])
    np.testing.assert_allclose(batched[0], with_pad, rtol=1e-4, atol=1e-6)
