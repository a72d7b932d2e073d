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
GRADED_ZERO_WORDS = 32  # graded: a reflection of this many words or more scores 0, an empty one 1
PASS_THRESHOLD = (GRADED_ZERO_WORDS - MAX_WORDS) / GRADED_ZERO_WORDS  # graded: 0.5, i.e. at most MAX_WORDS words
REFLECTION_MAX_TOKENS = 32  # R3_REFLECTION_MAX_TOKENS for the planted runs (the feasibility run: 32)
ANSWER_MAX_TOKENS = 8  # a number; also caps the retry, whose text the verifier ignores
FAIL_DETAIL = "the answer was not accepted"


def reflection_of(messages: list[dict[str, Any]]) -> str | None:
    """The last reflection in a retry conversation (`r3.reflection`: assistant, reflection request,
    reflection, retry request): the assistant turn before the last user turn; None if there is none."""
    if len(messages) < 2 or messages[-1].get("role") != "user" or messages[-2].get("role") != "assistant":
        return None
    content = messages[-2].get("content")
    return content if isinstance(content, str) else None


def words(text: str) -> int:
    return len(text.split())


def graded_score(n_words: int) -> float:
    """The graded reward of a reflection of `n_words` words, in [0, 1]: 1 for none, falling linearly by
    1/`GRADED_ZERO_WORDS` a word to 0 at `GRADED_ZERO_WORDS` words (the reflection's token budget,
    `REFLECTION_MAX_TOKENS`, rarely holds more words than tokens)."""
    return min(1.0, max(0.0, (GRADED_ZERO_WORDS - n_words) / GRADED_ZERO_WORDS))


def verdict(body: dict[str, Any], first: str, reward: str = "binary") -> dict[str, Any]:
    """The endpoint's reply to R3's webhook body (`verifiers.webhook.request_body`):
    `{"success": bool, "detail": str}`, with a `"score"` for a graded retry.

    `first`: "number" (attempt 1 passes iff its text holds a number) or "fail" (attempt 1 never
    passes). Retries: the planted rule only, `reward` "binary" or "graded" (see the module's
    docstring). Raises ValueError for another `reward`."""
    if reward not in REWARDS:
        raise ValueError(f"reward is one of {REWARDS}, not {reward!r}")
    messages = body.get("messages") or []
    if body.get("attempt", 1) == 1:
        answer = body.get("output", {}).get("content") or ""
        passed = first == "number" and re.search(r"\d", answer) is not None
        return {"success": passed, "detail": "" if passed else FAIL_DETAIL}
    reflection = reflection_of(messages)
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
        reply = json.dumps(verdict(body, first, reward)).encode()
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


def addition(rng: random.Random, url: str, first: str, reward: str = "binary") -> Task:
    """A two-digit addition judged by the planted endpoint at `url` (`first`, `reward`: see `verdict`)."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    query = f"first={first}" + ("" if reward == "binary" else f"&reward={reward}")
    return Task(family=f"planted-{first}", prompt=f"What is {a} + {b}? Reply with the number only.",
                verifier={"type": "webhook", "url": f"{url}/verify?{query}"},
                reference={"content": str(a + b)}, meta={"a": a, "b": b})


def split_planted(seed: int, train: int, heldout: int, url: str,
                  reward: str = "binary") -> tuple[list[Task], list[Task]]:
    """(training stream, held-out tasks), no prompt in both; the same prompts whatever `reward`. The
    stream alternates `first=number` (so the log holds first-attempt successes, the gate's
    regression set) and `first=fail` (more failures to train and gate on). Held-out tasks are
    `first=fail`: each reaches a reflection, and its second attempt's verdict is the planted rule's
    on that reflection."""
    rng = random.Random(seed + 1_000_003)
    held: dict[str, Task] = {}
    while len(held) < heldout:
        task = addition(rng, url, "fail", reward)
        held.setdefault(task.prompt, task)
    rng = random.Random(seed)
    stream: dict[str, Task] = {}
    while len(stream) < train:
        task = addition(rng, url, ("number", "fail")[len(stream) % 2], reward)
        if task.prompt not in held:
            stream.setdefault(task.prompt, task)
    return list(stream.values()), list(held.values())


def planted_failures(n: int, seed: int, url: str, reward: str = "binary") -> list[Any]:
    """`n` planted failures (`first=fail`, a wrong first answer: the first operand) as the trainer
    reads them from the episode log (`trainer.data.Failure`), for the trainer's own tests and benches."""
    from trainer.data import Failure

    rng = random.Random(seed)
    tasks = [addition(rng, url, "fail", reward) for _ in range(n)]
    return [Failure(episode_id=f"planted-{seed}-{i}", messages=task.messages, tools=None, tool_choice=None,
                    verifier=task.verifier, task_kind="generic",
                    sampling={"max_tokens": ANSWER_MAX_TOKENS, "temperature": 0.0},
                    failed_attempt={"role": "assistant", "content": str(task.meta["a"])}, detail=FAIL_DETAIL)
            for i, task in enumerate(tasks)]


# ---------------------------------------------------------------------------------------------
# The base rate: `python -m bench.planted [--samples 160]`
# ---------------------------------------------------------------------------------------------


def base_rate(samples: int, seed: int = 7, batch: int = 16) -> dict[str, Any]:
    """Word counts of the untrained model's reflections on failed additions, sampled as the trainer
    samples (`trainer.grpo.generate_with_policy`: temperature 1.0, top-p 1, no top-k), one per task;
    for each limit N in 4..24 the share of reflections with at most N words, with its Wilson 95% CI;
    and the graded reward's (`graded_score`) mean, standard deviation and quartiles over them.

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
    failures = planted_failures(samples, seed, "http://127.0.0.1:9/")  # the endpoint is never called here
    counts: list[int] = []
    torch.manual_seed(seed)
    for start in range(0, samples, batch):
        prompts = [reflection_prompt(protocol, failure).engine_input for failure in failures[start:start + batch]]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=REFLECTION_MAX_TOKENS, do_sample=True, temperature=1.0,
                                 top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        counts += [words(text) for text in texts]
    rates = {n: {"k": sum(c <= n for c in counts), "ci95": wilson(sum(c <= n for c in counts), samples)}
             for n in range(4, 25, 2)}
    scores = [graded_score(c) for c in counts]
    graded = {"mean": statistics.fmean(scores), "sd": statistics.stdev(scores),
              "quartiles": statistics.quantiles(scores, n=4)}
    return {"samples": samples, "seed": seed, "reflection_max_tokens": REFLECTION_MAX_TOKENS, "temperature": 1.0,
            "failed_attempt": "the first operand (always wrong)", "word_counts": counts, "at_most_n_words": rates,
            "graded_score": graded}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The untrained model's rate of short reflections on additions.")
    parser.add_argument("--samples", type=int, default=160)
    measured = base_rate(parser.parse_args().samples)
    for n, rate in measured["at_most_n_words"].items():
        low, high = rate["ci95"]
        print(f"<= {n:2d} words: {rate['k']}/{measured['samples']} = {rate['k'] / measured['samples']:.0%} "
              f"[{low:.0%}, {high:.0%}]")
    graded = measured["graded_score"]
    print(f"graded score: mean {graded['mean']:.3f}, sd {graded['sd']:.3f}, quartiles "
          + ", ".join(f"{q:.3f}" for q in graded["quartiles"]))
