"""`text_similarity`: each metric is its library's value, scored against `pass_threshold`."""

from __future__ import annotations

import pytest
import sacrebleu
from nltk.translate.gleu_score import sentence_gleu
from pydantic import ValidationError
from rapidfuzz import fuzz
from rouge_score import rouge_scorer

from verifiers import Attempt, TaskContext, parse_spec
from verifiers.graders.text_similarity import TextSimilaritySpec, similarity

ANSWER = "The quick brown fox jumps over the lazy dog near the river bank"
REFERENCE = "A quick brown fox jumps over the lazy dog by the river bank"


def spec(metric: str, **fields) -> TextSimilaritySpec:
    parsed = parse_spec({"type": "text_similarity", "name": "similar", "input": "{{ sample.output_text }}",
                         "reference": "{{ item.reference }}", "evaluation_metric": metric,
                         "item": {"reference": REFERENCE}, **fields})
    assert isinstance(parsed, TextSimilaritySpec)
    return parsed


def library_value(metric: str, text: str, reference: str) -> float:
    """The metric as its own library computes it (the texts in the order OpenAI names them: input graded
    against reference)."""
    if metric == "fuzzy_match":
        return fuzz.ratio(text, reference) / 100
    if metric == "bleu":
        return sacrebleu.sentence_bleu(text, [reference]).score / 100
    if metric == "gleu":
        return sentence_gleu([reference.split()], text.split())
    kind = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
    return rouge_scorer.RougeScorer([kind]).score(reference, text)[kind].fmeasure


METRICS = ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"]


@pytest.mark.parametrize("metric", METRICS)
def test_each_metric_is_its_librarys_value(metric) -> None:
    verdict = spec(metric).judge(Attempt(ANSWER), TaskContext())
    expected = library_value(metric, ANSWER, REFERENCE)
    assert 0 < expected < 1
    assert verdict.score == pytest.approx(expected, abs=1e-12)
    assert verdict.success is (expected >= 0.5)
    assert f"{metric} {expected:.3f}" in verdict.detail and REFERENCE not in verdict.detail


@pytest.mark.parametrize(
    ("metric", "text", "reference", "value"),
    [
        ("fuzzy_match", "this is a test", "this is a test!", 0.9655172413793103),  # rapidfuzz's own example
        ("bleu", "the cat", "the cat sat on the mat", 0.1353352832366127),  # brevity penalty exp(1 - 6/2)
        ("rouge_1", "the cat sat on", "the cat sat", 6 / 7),  # P 3/4, R 3/3
        ("rouge_l", "the cat sat on", "sat the cat", 4 / 7),  # LCS "the cat": P 2/4, R 2/3
        ("rouge_2", "Le chat", "Le chat", 1.0),
        ("rouge_1", "日本語", "日本語", 0.0),  # rouge-score's tokenizer keeps ASCII letters and digits only
        ("fuzzy_match", "", "", 1.0),
        ("bleu", "the cat sat on the mat", "the cat sat on the mat", 1.0),
    ],
)
def test_known_values(metric, text, reference, value) -> None:
    assert min(1.0, similarity(metric, text, reference)) == pytest.approx(value, abs=1e-12)


def test_rouge_l_is_rouge_scores_value_on_long_texts_quickly() -> None:
    """ROUGE-L's LCS is rapidfuzz's, on texts rouge-score's own table takes seconds for; the same value."""
    words = [f"w{(i * 7919) % 613}" for i in range(1200)]
    text, reference = " ".join(words), " ".join(reversed(words))
    assert similarity("rouge_l", text, reference) == library_value("rouge_l", text, reference)
    long_text = " ".join(words * 10)
    assert 0 < similarity("rouge_l", long_text, " ".join(reversed(words * 10))) < 1  # 12,000 words each


@pytest.mark.parametrize(("threshold", "passes"), [(0.0, True), (0.9, True), (0.9656, False), (1, False)])
def test_the_pass_threshold_decides_success(threshold, passes) -> None:
    grader = parse_spec({"type": "text_similarity", "input": "{{ sample.output_text }}", "reference": "this is a test!",
                         "evaluation_metric": "fuzzy_match", "pass_threshold": threshold})
    verdict = grader.judge(Attempt("this is a test"), TaskContext())
    assert verdict.success is passes and verdict.score == pytest.approx(0.9655172413793103)


def test_the_default_pass_threshold_is_the_middle_of_the_scale() -> None:
    assert spec("fuzzy_match").pass_threshold == 0.5
    grader = spec("fuzzy_match")
    assert grader.judge(Attempt("zzzz"), TaskContext()).success is False
    assert grader.judge(Attempt(REFERENCE), TaskContext()).success is True


def test_the_openai_fine_tuning_example_parses_as_written() -> None:
    """A grader as an OpenAI fine-tuning job takes it: no pass_threshold; the answer in `reference`."""
    grader = parse_spec({"name": "text_similarity_sample_grader", "type": "text_similarity",
                         "input": "{{item.reference_answer}}", "reference": "{{sample.output_text}}",
                         "evaluation_metric": "fuzzy_match", "item": {"reference_answer": "Paris, France"}})
    verdict = grader.judge(Attempt("Paris France"), TaskContext())
    assert verdict.score == pytest.approx(fuzz.ratio("Paris, France", "Paris France") / 100)


def test_an_answer_that_is_not_the_json_read_scores_zero() -> None:
    grader = spec("fuzzy_match", input="{{ sample.output_json.summary }}")
    verdict = grader.judge(Attempt(ANSWER), TaskContext())
    assert verdict.success is False and verdict.score == 0.0
    assert "not the JSON the grader reads" in verdict.detail


@pytest.mark.parametrize(
    ("fields", "loc", "message"),
    [
        ({"evaluation_metric": "cosine"}, ("text_similarity", "evaluation_metric"), "embeddings"),
        ({"evaluation_metric": "meteor"}, ("text_similarity", "evaluation_metric"), "WordNet"),
        ({"evaluation_metric": "rouge_6"}, ("text_similarity", "evaluation_metric"), "Input should be"),
        ({"pass_threshold": 1.5}, ("text_similarity", "pass_threshold"), "less than or equal to 1"),
        ({"pass_threshold": "0.5"}, ("text_similarity", "pass_threshold"), "valid number"),
        ({"reference": "{{ item.answer }}"}, ("text_similarity", "reference"), "item.answer"),
    ],
)
def test_bad_specs_name_the_field(fields, loc, message) -> None:
    with pytest.raises(ValidationError) as raised:
        spec("bleu", **fields)
    (error,) = raised.value.errors()
    assert error["loc"] == loc and message in error["msg"]
