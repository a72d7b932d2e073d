"""The planted suite: a reward the untrained model earns sometimes, and only through its reflection.

No reflection of the bundled 135M model has ever rescued a real failure (`bench/rescue.py`: 0 of
153), so on real tasks every GRPO group has equal rewards and nothing is learned. This suite asks a
narrower question: when the reward signal exists, does R3's loop move the policy the way the reward
says, and carry the change to live traffic? It plants the signal in a verifier R3 already has:
R3's `webhook` verifier, pointed at `PlantedVerifier`, a scripted HTTP endpoint on loopback that the
benchmark starts. The webhook receives the whole conversation, so it can judge the reflection.

The tasks are two-digit additions ("What is 23 + 45? Reply with the number only."). The endpoint
judges

- attempt 1: by whether the answer takes up the question with a number (`first=number`: it holds
  one, as the untrained model's greedy answers do: "59 + 63 = ", "To add 61 and 4"), or never passes
  (`first=fail`: the held-out set, so that every held-out task reaches a reflection). Two other
  checks were tried: the sum itself (the untrained model never gets it right within 8 tokens, which
  left the gate no regression set) and "names the first operand" (which penalises the terse answer
  "75", so it judged the style the planted reward teaches, brevity, rather than a regression: the
  gate rejected a round for 3 of 16 first answers that had become shorter);
- every retry, by the reflection before it (the retry's own text is never looked at, so the reward
  is reachable only through the reflection, and GRPO's reflection-only credit is exactly what is
  tested), as the task's `reward` says:
  - `binary` (the default): passes iff the reflection has at most `MAX_WORDS` words; score 1 or 0.
  - `graded`: scores `graded_score(words)` = clamp((`GRADED_ZERO_WORDS` − words) / `GRADED_ZERO_WORDS`,
    0, 1), the webhook's `score`, and passes at `PASS_THRESHOLD` (`verifiers.Verdict.graded`), which
    is exactly "at most `MAX_WORDS` words": pass rates mean the same under both rewards, and the
    graded one also ranks two failing (or two passing) reflections, so GRPO and the gate see a
    difference in nearly every group and item.

`MAX_WORDS` was chosen by measuring (`python -m bench.planted --samples 160`): the untrained model's
reflections on failed additions, sampled as the trainer samples them (temperature 1.0, no top-k,
up to `REFLECTION_MAX_TOKENS` tokens), pass the rule at a rate inside 10-50%, so most groups of G
reflections hold both a pass and a fail (see BENCHMARKS.md §5). Other checkable properties were
considered (names the failing argument, quotes the verifier's hint); length is the one the
untrained model meets at a useful rate and the one the issue's feasibility run learned.

A second planted rule, for a second scenario learning beside the first (`r3 bench learn --suite
planted --scenarios 2`), is the task's `rule` (`RULES`; "short", the above, by default):

- `value`: the reflection **names the failing value**, the first number of the failed first
  attempt (`failing_value`: "59" in "59 + 63 = "), which the endpoint's detail on that attempt
  reports ("the answer 59 was not accepted", `value_detail`); a retry passes iff the reflection
  before it holds that number as a whole number (`names_value`); binary only. A first attempt that
  holds no number has no failing value, and its retry cannot pass. Measured like `MAX_WORDS`
  (`python -m bench.planted --rule value`), its base rate is inside 10-50% too, and in those samples
  a reflection that names the value is no more often short than one that does not, so the two
  rules teach different things.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from bench.tasks import Task
from verifiers import Verdict

MAX_WORDS = 16  # a retry passes iff the reflection before it has at most this many words
REWARDS = ("binary", "graded")  # how a retry is scored (`verdict`)
RULES = ("short", "value")  # what a retry is judged on: the reflection's length, or whether it names the failing value
GRADED_ZERO_WORDS = 32  # graded: a reflection of this many words or more scores 0, an empty one 1
PASS_THRESHOLD = (GRADED_ZERO_WORDS - MAX_WORDS) / GRADED_ZERO_WORDS  # graded: 0.5, i.e. at most MAX_WORDS words
REFLECTION_MAX_TOKENS = 32  # R3_REFLECTION_MAX_TOKENS for the planted runs (the feasibility run: 32)
ANSWER_MAX_TOKENS = 8  # a number; also caps the retry, whose text the verifier ignores
FAIL_DETAIL = "the answer was not accepted"
NO_VALUE_DETAIL = "the answer held no number"  # the `value` rule's detail on a failed attempt without a number


def reflection_of(messages: list[dict[str, Any]]) -> str | None:
    """The last reflection in a retry conversation (`r3.reflection`: assistant, reflection request,
    reflection, retry request): the assistant turn before the last user turn; None if there is none."""
    if len(messages) < 2 or messages[-1].get("role") != "user" or messages[-2].get("role") != "assistant":
        return None
    content = messages[-2].get("content")
    return content if isinstance(content, str) else None


def failed_answer_of(messages: list[dict[str, Any]]) -> str | None:
    """The failed attempt a retry conversation's last reflection is about (`r3.reflection`: failed
    attempt, reflection request, reflection, retry request): the assistant turn before the last
    reflection request; None if there is none."""
    if len(messages) < 4 or messages[-4].get("role") != "assistant" or messages[-3].get("role") != "user":
        return None
    content = messages[-4].get("content")
    return content if isinstance(content, str) else None


def words(text: str) -> int:
    return len(text.split())


def failing_value(answer: str) -> str | None:
    """The `value` rule's failing value of a failed attempt: the first whole number in its text
    ("59" in "59 + 63 = "); None when it holds none."""
    match = re.search(r"\d+", answer)
    return match.group() if match else None


def value_detail(answer: str) -> str:
    """The `value` rule's detail on a failed first attempt: its failing value, reported."""
    value = failing_value(answer)
    return NO_VALUE_DETAIL if value is None else f"the answer {value} was not accepted"


def names_value(reflection: str, value: str | None) -> bool:
    """Whether `reflection` holds the failing `value` as a whole number ("59" in "I said 59.", not
    in "159" or "5.9"); False when there is no value."""
    return value is not None and re.search(rf"(?<![\d.]){value}(?![\d]|\.\d)", reflection) is not None


def graded_score(n_words: int) -> float:
    """The graded reward of a reflection of `n_words` words, in [0, 1]: 1 for none, falling linearly by
    1/`GRADED_ZERO_WORDS` a word to 0 at `GRADED_ZERO_WORDS` words (the reflection's token budget,
    `REFLECTION_MAX_TOKENS`, rarely holds more words than tokens)."""
    return min(1.0, max(0.0, (GRADED_ZERO_WORDS - n_words) / GRADED_ZERO_WORDS))


def verdict(body: dict[str, Any], first: str, reward: str = "binary", rule: str = "short") -> dict[str, Any]:
    """The endpoint's reply to R3's webhook body (`verifiers.webhook.request_body`):
    `{"success": bool, "detail": str}`, with a `"score"` for a graded retry.

    `first`: "number" (attempt 1 passes iff its text holds a number) or "fail" (attempt 1 never
    passes). Retries: the planted `rule` only, "short" (`reward` "binary" or "graded") or "value"
    (binary), see the module's docstring. Raises ValueError for another `reward` or `rule`, or for
    the `value` rule graded."""
    if reward not in REWARDS:
        raise ValueError(f"reward is one of {REWARDS}, not {reward!r}")
    if rule not in RULES or (rule == "value" and reward != "binary"):
        raise ValueError(f"rule is one of {RULES} (value: binary reward only), not {rule!r} with {reward!r}")
    messages = body.get("messages") or []
    if body.get("attempt", 1) == 1:
        answer = body.get("output", {}).get("content") or ""
        passed = first == "number" and re.search(r"\d", answer) is not None
        return {"success": passed,
                "detail": "" if passed else value_detail(answer) if rule == "value" else FAIL_DETAIL}
    reflection = reflection_of(messages)
    if rule == "value":
        failed = failed_answer_of(messages)
        passed = reflection is not None and failed is not None and names_value(reflection, failing_value(failed))
        return {"success": passed, "detail": "" if passed else FAIL_DETAIL}
    if reward == "graded":
        graded = Verdict.graded(0.0 if reflection is None else graded_score(words(reflection)), PASS_THRESHOLD)
        return {"success": graded.success, "score": graded.score, "detail": "" if graded.success else FAIL_DETAIL}
    passed = reflection is not None and words(reflection) <= MAX_WORDS
    return {"success": passed, "detail": "" if passed else FAIL_DETAIL}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        query = parse_qs(urlparse(self.path).query)
        first, reward = query.get("first", ["number"])[0], query.get("reward", ["binary"])[0]
        reply = json.dumps(verdict(body, first, reward, query.get("rule", ["short"])[0])).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *_: Any) -> None:  # quiet
        pass


@contextmanager
def planted_verifier() -> Iterator[str]:
    """`with planted_verifier() as url:` the scripted endpoint on 127.0.0.1 (a free port), in a
    thread of this process; R3 reaches it with R3_WEBHOOK_ALLOW_LOOPBACK=true."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def addition(rng: random.Random, url: str, first: str, reward: str = "binary", rule: str = "short") -> Task:
    """A two-digit addition judged by the planted endpoint at `url` (`first`, `reward`, `rule`: see `verdict`)."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    query = (f"first={first}" + ("" if reward == "binary" else f"&reward={reward}")
             + ("" if rule == "short" else f"&rule={rule}"))
    return Task(family=f"planted-{first}", prompt=f"What is {a} + {b}? Reply with the number only.",
                verifier={"type": "webhook", "url": f"{url}/verify?{query}"},
                reference={"content": str(a + b)}, meta={"a": a, "b": b})


def split_planted(seed: int, train: int, heldout: int, url: str, reward: str = "binary",
                  rule: str = "short") -> tuple[list[Task], list[Task]]:
    """(training stream, held-out tasks), no prompt in both; the same prompts whatever `reward` and
    `rule`, and the first `n` held-out tasks the same whatever `heldout` >= `n`. The
    stream alternates `first=number` (so the log holds first-attempt successes, the gate's
    regression set) and `first=fail` (more failures to train and gate on). Held-out tasks are
    `first=fail`: each reaches a reflection, and its second attempt's verdict is the planted rule's
    on that reflection."""
    rng = random.Random(seed + 1_000_003)
    held: dict[str, Task] = {}
    while len(held) < heldout:
        task = addition(rng, url, "fail", reward, rule)
        held.setdefault(task.prompt, task)
    rng = random.Random(seed)
    stream: dict[str, Task] = {}
    while len(stream) < train:
        task = addition(rng, url, ("number", "fail")[len(stream) % 2], reward, rule)
        if task.prompt not in held:
            stream.setdefault(task.prompt, task)
    return list(stream.values()), list(held.values())


def planted_failures(n: int, seed: int, url: str, reward: str = "binary", rule: str = "short") -> list[Any]:
    """`n` planted failures (`first=fail`, a wrong first answer: the first operand, with the
    endpoint's detail on it under `rule`) as the trainer reads them from the episode log
    (`trainer.data.Failure`), for the trainer's own tests and benches."""
    from trainer.data import Failure

    rng = random.Random(seed)
    tasks = [addition(rng, url, "fail", reward, rule) for _ in range(n)]
    return [Failure(episode_id=f"planted-{seed}-{i}", messages=task.messages, tools=None, tool_choice=None,
                    verifier=task.verifier, task_kind="generic",
                    sampling={"max_tokens": ANSWER_MAX_TOKENS, "temperature": 0.0},
                    failed_attempt={"role": "assistant", "content": str(task.meta["a"])},
                    detail=value_detail(str(task.meta["a"])) if rule == "value" else FAIL_DETAIL)
            for i, task in enumerate(tasks)]


# ---------------------------------------------------------------------------------------------
# The base rate: `python -m bench.planted [--samples 160]`
# ---------------------------------------------------------------------------------------------


def base_rate(samples: int, seed: int = 7, batch: int = 16, rule: str = "short") -> dict[str, Any]:
    """The untrained model's reflections on failed additions (`planted_failures` under `rule`: its
    detail), sampled as the trainer samples (`trainer.grpo.generate_with_policy`: temperature 1.0,
    top-p 1, no top-k), one per task: their word counts; for each limit N in 4..24 the share with at
    most N words, with its Wilson 95% CI; the graded reward's (`graded_score`) mean, standard
    deviation and quartiles over them; and the share that name the failing value (`names_value`),
    with its Wilson 95% CI and how many of those have at most `MAX_WORDS` words.

    Blocking, CPU-heavy (10 min for 160 samples on 2 shared, busy cores)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r3 import bundled_model
    from r3.settings import Settings
    from r3.stats import wilson
    from r3.reflect_retry import ReflectRetry
    from trainer.grpo import reflection_prompt
    from verifiers import VerifierRuntime

    path = bundled_model.resolve(Settings(_env_file=None))
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    protocol = ReflectRetry(tokenizer, VerifierRuntime())
    failures = planted_failures(samples, seed, "http://127.0.0.1:9/", rule=rule)  # the endpoint is never called here
    texts: list[str] = []
    torch.manual_seed(seed)
    for start in range(0, samples, batch):
        prompts = [reflection_prompt(protocol, failure).engine_input for failure in failures[start:start + batch]]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=REFLECTION_MAX_TOKENS, do_sample=True, temperature=1.0,
                                 top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id)
        texts += tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    counts = [words(text) for text in texts]
    rates = {n: {"k": sum(c <= n for c in counts), "ci95": wilson(sum(c <= n for c in counts), samples)}
             for n in range(4, 25, 2)}
    scores = [graded_score(c) for c in counts]
    graded = {"mean": statistics.fmean(scores), "sd": statistics.stdev(scores),
              "quartiles": statistics.quantiles(scores, n=4)}
    named = [names_value(text, failing_value(failure.failed_attempt["content"]))
             for text, failure in zip(texts, failures, strict=True)]
    return {"samples": samples, "seed": seed, "rule": rule, "reflection_max_tokens": REFLECTION_MAX_TOKENS,
            "temperature": 1.0, "failed_attempt": "the first operand (always wrong)",
            "detail": failures[0].detail if failures else None, "word_counts": counts, "at_most_n_words": rates,
            "graded_score": graded,
            "names_value": {"k": sum(named), "ci95": wilson(sum(named), samples),
                            "short_among_them": sum(n and c <= MAX_WORDS for n, c in zip(named, counts, strict=True))},
            "reflections": texts}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The untrained model's rate of short reflections on additions, "
                                                 "and of reflections that name the failing value.")
    parser.add_argument("--samples", type=int, default=160)
    parser.add_argument("--rule", choices=RULES, default="short", help="whose detail the failures carry")
    arguments = parser.parse_args()
    measured = base_rate(arguments.samples, rule=arguments.rule)
    n = measured["samples"]
    for limit, rate in measured["at_most_n_words"].items():
        low, high = rate["ci95"]
        print(f"<= {limit:2d} words: {rate['k']}/{n} = {rate['k'] / n:.0%} [{low:.0%}, {high:.0%}]")
    graded = measured["graded_score"]
    print(f"graded score: mean {graded['mean']:.3f}, sd {graded['sd']:.3f}, quartiles "
          + ", ".join(f"{q:.3f}" for q in graded["quartiles"]))
    named = measured["names_value"]
    low, high = named["ci95"]
    print(f"names the failing value (detail: {measured['detail']!r}): {named['k']}/{n} = {named['k'] / n:.0%} "
          f"[{low:.0%}, {high:.0%}]; of those, {named['short_among_them']} have <= {MAX_WORDS} words")
