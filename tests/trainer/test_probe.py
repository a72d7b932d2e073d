"""The general-capability probe (`trainer.probe`): its file read strictly, and its items scored on the
bundled model as lm-evaluation-harness scores a multiple-choice task, checked against the same
log-likelihoods computed with transformers (and peft) directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r3.engines.transformers_engine import TransformersEngine
from trainer.probe import ProbeError, ProbeItem, encode_pair, read_probe, run_probe, score_probe

# A tiny probe the tests make (R3 ships none). The third item's answer is the unlikely choice, so that
# accuracy is not 1 by construction; the fourth's question ends in a space (which moves to the
# continuation); the last's choices are longer in bytes than in characters.
ITEMS = [
    {"question": "The capital of France is", "choices": ["Paris", "a banana", "blue"], "answer": 0},
    {"question": "Question: What is two plus two?\nAnswer:", "choices": ["4", "seventeen"], "answer": 0},
    {"question": "The opposite of hot is", "choices": ["cold", "Tuesday"], "answer": 1},
    {"question": "The sun rises in the ", "choices": ["east", "west", "elephant"], "answer": 0},
    {"question": "In Paris one drinks coffee at a", "choices": ["café", "naïve résumé"], "answer": 0},
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_a_probe_file_is_read_item_by_item(tmp_path: Path) -> None:
    items = read_probe(write(tmp_path / "probe.jsonl", [json.dumps(item) for item in ITEMS]))
    assert [item.model_dump() for item in items] == ITEMS


@pytest.mark.parametrize(("line", "error"), [
    ('{"question": "Q", "choices": ["a", "b"]', "line 2: not JSON (Expecting ',' delimiter, column 40)"),
    ('["Q", ["a", "b"], 0]', "line 2: Input should be a valid dictionary"),
    ('{"question": "Q", "choices": ["a", "b"]}', "line 2: answer: Field required"),
    ('{"question": "Q", "choices": ["a", "b"], "answer": 2}',
     "line 2: answer: Value error, 2 is not the index of one of the 2 choices (0 to 1)"),
    ('{"question": "Q", "choices": ["a", "b"], "answer": "0"}', "line 2: answer: Input should be a valid integer"),
    ('{"question": "Q", "choices": ["a", "b"], "answer": true}', "line 2: answer: Input should be a valid integer"),
    ('{"question": "Q", "choices": ["a"], "answer": 0}', "line 2: choices: List should have at least 2 items"),
    ('{"question": "Q", "choices": ["a", ""], "answer": 0}', "line 2: choices.1: String should have at least 1"),
    ('{"question": "Q", "choices": ["a", "a"], "answer": 0}', "line 2: choices: Value error, two choices are the same"),
    ('{"question": " ", "choices": ["a", "b"], "answer": 0}', "line 2: question: Value error, the question is blank"),
    ('{"question": "Q", "choices": ["a", "b"], "answer": 0, "anwser": 1}', "line 2: anwser: Extra inputs"),
    ('', "line 2: not JSON (Expecting value, column 1)"),
])
def test_a_line_that_is_not_an_item_is_refused_naming_the_line_and_field(tmp_path: Path, line: str, error: str) -> None:
    path = write(tmp_path / "probe.jsonl", [json.dumps(ITEMS[0]), line, json.dumps(ITEMS[1])])
    with pytest.raises(ProbeError, match="lines that are not items") as refused:
        read_probe(path)
    assert error in str(refused.value) and str(path) in str(refused.value)
    assert "line 1" not in str(refused.value) and "line 3" not in str(refused.value)


def test_a_probe_file_that_is_missing_or_empty_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="cannot be read"):
        read_probe(tmp_path / "absent.jsonl")
    with pytest.raises(ProbeError, match="holds no item"):
        read_probe(write(tmp_path / "empty.jsonl", []))


def test_the_contexts_trailing_whitespace_moves_to_the_continuation() -> None:
    """As lm-eval's HFLM._encode_pair: the continuation's tokens follow the context's own tokens in the
    tokens of both together (here one token per word, a space joined to the word after it)."""
    import re

    vocabulary: dict[str, int] = {}

    def encode(text: str) -> list[int]:
        return [vocabulary.setdefault(word, len(vocabulary)) for word in re.findall(r"\s*\S+|\s+", text)]

    context, continuation = encode_pair(encode, "The sun rises in the ", " east")
    assert context == encode("The sun rises in the") and continuation == encode("  east")[-1:]


async def test_the_probe_scores_choices_by_log_likelihood_as_lm_eval_does(model_path: Path, lora_path: Path,
                                                                          tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    items = read_probe(write(tmp_path / "probe.jsonl", [json.dumps(item) for item in ITEMS]))
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def by_hand(model) -> list[list[float]]:
        """lm-eval's loglikelihood(question, " " + choice), written out: a space the question ends in
        moves to the continuation; the question's tokens, then what follows them in the tokens of both."""
        scores = []
        for item in ITEMS:
            row = []
            for choice in item["choices"]:
                context, continuation = item["question"], " " + choice
                if context.endswith(" "):
                    context, continuation = context[:-1], " " + continuation
                context_ids = tokenizer(context, add_special_tokens=False).input_ids
                whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
                ids = context_ids + whole[len(context_ids):]
                with torch.no_grad():
                    logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
                row.append(sum(logprobs[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids))))
            scores.append(row)
        return scores

    def accuracy(scores: list[list[float]], length=lambda choice: 1) -> float:
        picks = [max(range(len(row)), key=lambda j: row[j] / length(item["choices"][j]))
                 for item, row in zip(ITEMS, scores)]
        return sum(pick == item["answer"] for pick, item in zip(picks, ITEMS)) / len(ITEMS)

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    base_by_hand = by_hand(model)
    candidate_by_hand = by_hand(PeftModel.from_pretrained(model, lora_path).eval())
    # Each item's best choice wins by more than any rounding between the engine and transformers.
    for scores in (*base_by_hand, *candidate_by_hand):
        best, second = sorted(scores, reverse=True)[:2]
        assert best - second > 0.01, scores

    engine = TransformersEngine(str(model_path), "probe-test", max_batch_size=4)
    try:
        await engine.load_adapter("candidate", lora_path)
        base = await score_probe(engine, items)
        candidate = await score_probe(engine, items, "candidate")
        for result, expected in ((base, base_by_hand), (candidate, candidate_by_hand)):
            assert [row for row in result.loglikelihoods] == [pytest.approx(row, abs=1e-3) for row in expected]
            assert result.acc == accuracy(expected)
            assert result.acc_norm == accuracy(expected, len)
            assert result.acc_bytes == accuracy(expected, lambda choice: len(choice.encode()))
        assert base.acc not in (0.0, 1.0)  # the unlikely answer counts against it
        assert candidate.loglikelihoods != base.loglikelihoods  # the adapter is what was scored

        drop = base.acc - candidate.acc
        passed, numbers = await run_probe(engine, items, "candidate", max_drop=0.0)
        assert passed is (drop <= 0) and numbers["n"] == len(ITEMS)
        assert numbers["candidate"] == candidate.metrics() and numbers["base"] == base.metrics()
        assert numbers["candidate_acc"] == candidate.acc and numbers["base_acc"] == base.acc

        too_long = ProbeItem(question="word " * engine.max_model_len, choices=["a", "b"], answer=0)
        with pytest.raises(ProbeError, match=r"item on line 2, with choice 'a', is \d+ tokens: too long"):
            await score_probe(engine, [items[0], too_long])
    finally:
        await engine.close()
