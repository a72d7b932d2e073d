"""`text_similarity`: OpenAI's text similarity grader, a metric of how close the rendered `input` (the
text graded) is to the rendered `reference`, in [0, 1].

OpenAI's graders guide (https://platform.openai.com/docs/guides/graders, "Text similarity graders")
names the metrics and their libraries; R3 computes each with that library:

- `fuzzy_match`: "fuzzy string match, using rapidfuzz". The guide names no scorer; R3 uses rapidfuzz's
  plain `fuzz.ratio` (normalised Indel similarity of the two texts), as OpenAI's own RFT grader
  examples do, divided by 100.
- `bleu`: sentence BLEU of `input` against `reference` (sacrebleu's `sentence_bleu`, its defaults:
  13a tokenization, exponential smoothing), divided by 100.
- `gleu`: Google-BLEU (nltk's `sentence_gleu`, n-grams 1 to 4) of the whitespace-split texts.
- `rouge_1` … `rouge_5`, `rouge_l`: "as defined by the rouge python library" (Google's `rouge-score`):
  its F-measure, with its default tokenizer (lowercased ASCII letters and digits: text in other
  scripts has no tokens) and no stemming. ROUGE-L's longest common subsequence is counted by rapidfuzz's
  `LCSseq` (bit-parallel) rather than by rouge-score's pure-Python table, which takes ~50 s for two
  texts of 11,000 words; the score is rouge-score's formula, the same to the last digit.

Two of OpenAI's metrics are refused when the spec is read (a 400 naming `verifier.evaluation_metric`):
`cosine` embeds both texts with OpenAI's embeddings model, an endpoint R3 does not call; `meteor` needs
the WordNet corpus, which nltk downloads at run time and no package R3 installs ships.

`pass_threshold`: OpenAI's evals require it; its fine-tuning jobs have none (a job is trained on the
score). R3 needs one to decide whether an answer is retried: it defaults to 0.5, the middle of the scale.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from nltk.translate.gleu_score import sentence_gleu
from pydantic import field_validator
from rapidfuzz import fuzz
from rapidfuzz.distance import LCSseq
from rouge_score import rouge_scorer, scoring, tokenizers
from sacrebleu import sentence_bleu

from verifiers.base import Attempt, TaskContext, Verdict
from verifiers.graders.common import DEFAULT_PASS_THRESHOLD, GraderSpec, PassThreshold, Sample, TemplateFailure, \
    render, templates
from verifiers.registry import VerifierType, register

Metric = Literal["cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
                 "rouge_5", "rouge_l"]

REFUSED_METRICS = {
    "cosine": "cosine similarity needs an embeddings model (OpenAI's grader calls its embeddings endpoint), "
              "which R3 does not call; use fuzzy_match, bleu, gleu or a rouge metric, or a score_model grader",
    "meteor": "METEOR needs the WordNet corpus, which nltk downloads at run time and this server does not "
              "have; use bleu, gleu or a rouge metric",
}

_ROUGE_TOKENS = tokenizers.DefaultTokenizer(use_stemmer=False)


@cache
def _rouge_n(n: int) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer([f"rouge{n}"], use_stemmer=False)


def _rouge_l(text: str, reference: str) -> float:
    """rouge-score's ROUGE-L F-measure (`rouge_scorer._score_lcs`), its LCS counted by rapidfuzz."""
    prediction, target = _ROUGE_TOKENS.tokenize(text), _ROUGE_TOKENS.tokenize(reference)
    if not prediction or not target:
        return 0.0
    common = LCSseq.similarity(prediction, target)
    return scoring.fmeasure(common / len(prediction), common / len(target))


def similarity(metric: str, text: str, reference: str) -> float:
    """`metric` (one R3 computes) of `text` against `reference`, in [0, 1] (BLEU can exceed 1 by a
    rounding error: `Verdict.graded` clamps it)."""
    if metric == "fuzzy_match":
        return fuzz.ratio(text, reference) / 100
    if metric == "bleu":
        return sentence_bleu(text, [reference]).score / 100
    if metric == "gleu":
        return sentence_gleu([reference.split()], text.split())
    if metric == "rouge_l":
        return _rouge_l(text, reference)
    n = int(metric.removeprefix("rouge_"))
    return _rouge_n(n).score(reference, text)[f"rouge{n}"].fmeasure


class TextSimilaritySpec(GraderSpec):
    type: Literal["text_similarity"]
    input: str  # a template: the text graded, usually "{{ sample.output_text }}"
    reference: str  # a template: the text it is graded against
    evaluation_metric: Metric
    pass_threshold: PassThreshold = DEFAULT_PASS_THRESHOLD

    _templates = templates("input", "reference")

    @field_validator("evaluation_metric")
    @classmethod
    def _computed_here(cls, metric: str) -> str:
        if metric in REFUSED_METRICS:
            raise ValueError(f"{metric} is not available on R3: {REFUSED_METRICS[metric]}")
        return metric

    def judge(self, attempt: Attempt, context: TaskContext) -> Verdict:
        sample = Sample.of(attempt)
        try:
            text, reference = render(self.input, sample, self.item), render(self.reference, sample, self.item)
        except TemplateFailure as error:
            return Verdict(False, str(error))
        score = min(1.0, max(0.0, similarity(self.evaluation_metric, text, reference)))
        verdict = "passes" if score >= self.pass_threshold else "is below"
        detail = (f"{self.name or 'text_similarity'}: {self.evaluation_metric} {score:.3f} {verdict} the pass "
                  f"threshold {self.pass_threshold:g}")
        return Verdict.graded(score, self.pass_threshold, detail)


register(VerifierType(
    TextSimilaritySpec, judge=TextSimilaritySpec.judge,
    summary="OpenAI's `text_similarity` grader: the score is `evaluation_metric` (`fuzzy_match`, `bleu`, "
            "`gleu`, `rouge_1`…`rouge_5`, `rouge_l`) of the rendered `input` against the rendered "
            "`reference`; passes from `pass_threshold` (default 0.5)",
))
