"""`r3 bench learn`: does R3's real loop make the bundled model better at a task suite, on a CPU?

    r3 bench learn [--minutes 35] [--seed 0] [--heldout 80]
    r3 bench learn --suite planted [--reward graded] [--canary-fraction 0.5] [--no-control]
    r3 bench learn --suite planted --scenarios 2 [--canary-fraction 0.5]
    python -m bench.learn [--suite planted [--reward graded]] [same options]

`--suite planted` (`planted_experiment`, `PLANTED`) asks the narrower question the bundled model
can answer: with a reward it earns sometimes, and only through its reflection (bench/planted.py),
does one round of the loop move the policy the way the reward says? It also runs the same round
with the rewards shuffled within each group (R3_TRAIN_SHUFFLE_REWARDS) as a control, and sends
new requests to the active version after a swap. `--reward graded` scores each retry on a scale
(`planted.graded_score`) instead of pass/fail; the held-out measure is then the mean score, with
Student-t 95% intervals and a one-sided Wilcoxon signed-rank test before vs after (`paired_scores`),
written to learn_planted_graded.json and .png. `--canary-fraction F` (> 0) makes an accepted
candidate a live canary first (R3_CANARY_FRACTION): the bench sends live unpinned requests until
the server's sequential test decides (`canary_phase`), and records the decision, the episodes it
took and who served them. `--scenarios 2` (`scenarios_experiment`, `SCENARIOS`) runs two scenarios
on one server, each with its own planted rule (short reflections; reflections that name the failing
value), traffic, round and lineage, and evaluates each scenario's held-out set on what each
scenario serves: learn_planted_scenarios.json and .png. The rest of this docstring is the default suite.

Reading order:

1. The task suite (`bench/tasks.py`): synthetic tasks generated from a seed and checked by R3's
   own verifiers; by default two-number Countdown ("Using the numbers 11 and 5, make 6.", the
   `countdown` verifier), where the untrained model passes about a third of first attempts. The
   tool-call families (`tool_call` verifier, exact arguments) are there too (`--families`). The
   training stream and the held-out set come from different seeds and share no prompt.
2. The loop, the real one: an `r3 serve` process with a fresh data dir (embedded SQLite), training
   tasks sent through the HTTP API with their verifiers attached (so failures reflect, retry and are
   recorded as episodes), then `r3 train --once` in its own process against the same data dir, which
   trains on the recorded failures (GRPO, reflection tokens only), registers a candidate, gates it
   and promotes or rejects it; the server hot-swaps a promoted version. Repeated while time remains.
3. Evaluation: the fixed held-out set through the API, greedy, with one reflect-retry allowed, on
   the base model before training and on every version a round produced (each pinned by name,
   `r3@vN`, promoted or not), `store: false` so evaluation is never trained on.
   First-attempt success: attempt 1 passes. Second-attempt success: attempt 1 or, after one
   reflection, attempt 2 passes.
4. Statistics: Wilson 95% intervals; an exact one-sided McNemar (sign) test on the tasks whose
   outcome differs between two versions. The same for the served answers' verifier scores
   (`mean_score`, `paired_scores`): a pass rate for pass/fail verifiers.
5. Report: a rich table, `bench/results/learn.json`, and `bench/results/learn.png`.

The suite, as measured on the untrained model (greedy first attempts): two-number Countdown passes
29/80 held-out tasks (36%); three-number Countdown 0/16. The tool-call families need the forced call
(`tool_choice: "required"`) and a worked example of the family in the conversation: with the tool
forced by name the model wrote `"arguments": 59` or copied the tool's JSON schema (0/15 without the
example, 0/10 with it); with both, 12/22 in a smoke run, but timer and weather always passed while
currency codes and 12→24-hour alarms never did, and their 300–500-token prompts made one GRPO step
take ~4 minutes on two CPU cores (Countdown: 64–147 s).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from bench import planted
from bench import tasks as suite
from bench.common import REPO, RESULTS, R3Server, machine, require_bench_extra, stop
from r3.stats import sign_test_p_value, wilson
from r3.store.models import DEFAULT_SCENARIO
from r3.store.registry import model_name

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    minutes: float = 35.0  # the whole experiment: baseline, rounds and their evaluations (planted: any one wait)
    seed: int = 0
    heldout: int = 80  # held-out tasks, evaluated on every version
    batch: int = 48  # training tasks sent through the API before each round
    answer_max_tokens: int = 48  # an equation, or a tool call (~25 tokens; it also stops at </tool_call>)
    reflection_max_tokens: int = 64  # R3_REFLECTION_MAX_TOKENS
    train_max_failures: int = 16  # R3_TRAIN_MAX_FAILURES
    train_max_steps: int = 8  # R3_TRAIN_MAX_STEPS (2 failures × G reflections per step)
    num_generations: int = 4  # R3_TRAIN_NUM_GENERATIONS (GRPO's G)
    gate_regression_size: int = 16  # R3_GATE_REGRESSION_SIZE
    learning_rate: float = 5e-5  # R3_TRAIN_LEARNING_RATE
    prompts_per_step: int = 2  # R3_TRAIN_PROMPTS_PER_STEP (failures per step; × G reflections)
    heldout_fraction: float = 0.2  # R3_TRAIN_HELDOUT_FRACTION (the gate's share of the logged failures)
    concurrency: int = 8  # requests in flight, and sequences the engine batches (R3_MAX_BATCH_SIZE)
    families: tuple[str, ...] = suite.DEFAULT_FAMILIES
    # The planted suite (`--suite planted`, see `PLANTED` and bench/planted.py) only:
    eval_temperature: float = 0.0  # held-out and live requests (seeded per task when > 0)
    live: int = 32  # new requests sent to the active version after the swap
    gate_samples: int = 4  # R3_GATE_SAMPLES (reflections per held-out failure and adapter, T = 1)
    reward: str = "binary"  # how the planted endpoint scores a retry: planted.REWARDS
    scenarios: int = 1  # 1: the default scenario; 2: two scenarios, each its own rule and lineage (`SCENARIOS`)
    control: bool = True  # also run the shuffled-reward control round (one scenario only)
    # The live canary (R3_CANARY_*): > 0, a candidate the gate accepts first serves this share of its
    # scenario's unpinned requests, and the bench sends live requests until the server's test decides.
    canary_fraction: float = 0.0
    # R3's default margin is 0.02. On planted failures both sides' first attempts all score 0, and
    # showing two equal means within the margin takes ~130 episodes a side at 0.02, ~80 at 0.05
    # (r3.canary.decide simulated at the planted rates); a 5-point margin keeps the phase to minutes.
    canary_margin: float = 0.05
    canary_max_episodes: int = 300  # canary episodes after which an undecided canary gives up
    canary_check_s: float = 5.0  # how often the server runs the canary test

    def server_settings(self, data_dir: Path, admin_key: str) -> dict[str, str]:
        """The settings the server and the trainer share: same data dir, so the same SQLite and adapters."""
        canary = {"R3_CANARY_FRACTION": str(self.canary_fraction), "R3_CANARY_MARGIN": str(self.canary_margin),
                  "R3_CANARY_MAX_EPISODES": str(self.canary_max_episodes),
                  "R3_CANARY_CHECK_S": str(self.canary_check_s)} if self.canary_fraction > 0 else {}
        return {**canary,
            "R3_DATA_DIR": str(data_dir), "R3_ADMIN_KEY": admin_key,
            "R3_REFLECTION_MAX_TOKENS": str(self.reflection_max_tokens),
            "R3_TRAIN_MAX_FAILURES": str(self.train_max_failures),
            "R3_TRAIN_MAX_STEPS": str(self.train_max_steps),
            "R3_TRAIN_NUM_GENERATIONS": str(self.num_generations),
            "R3_TRAIN_LEARNING_RATE": str(self.learning_rate),
            "R3_TRAIN_PROMPTS_PER_STEP": str(self.prompts_per_step),
            "R3_TRAIN_HELDOUT_FRACTION": str(self.heldout_fraction),
            "R3_GATE_REGRESSION_SIZE": str(self.gate_regression_size),
            "R3_GATE_SAMPLES": str(self.gate_samples),
            "R3_ADAPTER_POLL_S": "1",
            "R3_MAX_BATCH_SIZE": str(self.concurrency),
            "R3_WEBHOOK_ALLOW_LOOPBACK": "true",  # the planted suite's verifier runs on 127.0.0.1
            # The bench runs each round itself (`r3 train --once`): no trainer beside the server, which
            # would start rounds of its own on the same failures.
            "R3_TRAINER": "off",
        }


# `r3 bench learn --suite planted`: one round of the real loop and its control, sized for ~20 minutes
# on 2 quiet CPU cores. G = 8 and 32-token reflections as the feasibility run with plain TRL
# (20% -> 45% short reflections after 12 steps of 16 samples at learning rate 1e-4); here 8 steps of
# 16 at twice that rate (the paper's 5e-7 is for full fine-tuning). 64 training
# requests give ~32 failures, half held out for the gate, which samples 4 reflections on each per
# adapter (R3_GATE_SAMPLES); greedy first answers that take up the question make its regression set.
# Held-out and live requests are sampled at the trainer's temperature, 1.0, 16 at a time.
PLANTED = Config(
    minutes=20.0, heldout=64, batch=64, answer_max_tokens=planted.ANSWER_MAX_TOKENS,
    reflection_max_tokens=planted.REFLECTION_MAX_TOKENS, train_max_failures=16, train_max_steps=8,
    num_generations=8, learning_rate=2e-4, prompts_per_step=2, heldout_fraction=0.5, gate_regression_size=16,
    concurrency=16, families=("planted",), eval_temperature=1.0, live=16, gate_samples=4)



# ---------------------------------------------------------------------------------------------
# The processes: `r3 serve` and `r3 train --once`
# ---------------------------------------------------------------------------------------------


def train_once(env: dict[str, str], data_dir: Path, timeout_s: float) -> tuple[int, float]:
    """`r3 train --once`: one round (train, register, gate, promote or reject). (exit code, seconds)."""
    started = time.monotonic()
    with open(data_dir / "trainer.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "r3", "train", "--once"], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = -1
        finally:
            if process.poll() is None:  # timed out, or this process is being stopped
                process.kill()
                process.wait()
    return code, time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# Sending tasks through the API
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    first: bool  # attempt 1 passed
    second: bool  # attempt 1 passed, or attempt 2 after one reflection did
    adapter: str  # the version that served it ("base" for none), as the response says
    episode_id: str
    score: float | None  # the served answer's (the last attempt's) verifier score in [0, 1]; None: unjudged
    detail: str = ""  # the verifier's detail on attempt 1


async def send(client: httpx.AsyncClient, tasks: list[suite.Task], model: str, config: Config,
               store: bool, temperature: float = 0.0, first_seed: int = 0) -> list[Outcome]:
    """Every task once, one reflect-retry allowed; `concurrency` requests in flight. Greedy unless
    `temperature` says otherwise; a sampled request is seeded with `first_seed` + its task's position."""
    limit = asyncio.Semaphore(config.concurrency)

    async def one(index: int, task: suite.Task) -> Outcome:
        body = task.request(model, config.answer_max_tokens, max_retries=1, store=store, temperature=temperature,
                            seed=first_seed + index if temperature > 0 else None)
        if task.tools:
            body["stop"] = ["</tool_call>"]  # the call is complete there; the rest would be prose
        async with limit:
            response = await client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        info = response.json()["r3"]
        verdicts = [attempt["success"] for attempt in info["attempts"]]
        return Outcome(first=bool(verdicts[0]), second=any(verdicts[:2]), adapter=info["adapter"],
                       episode_id=info["episode_id"], score=info["attempts"][-1]["score"],
                       detail=info["attempts"][0].get("detail") or "")

    return await asyncio.gather(*(one(index, task) for index, task in enumerate(tasks)))


async def wait_recorded(client: httpx.AsyncClient, episode_ids: list[str], timeout_s: float = 120) -> None:
    """Until every episode is in the database, where the trainer looks for failures."""
    deadline = time.monotonic() + timeout_s
    pending = list(episode_ids)
    while pending and time.monotonic() < deadline:
        answers = await asyncio.gather(*(client.get(f"/v1/episodes/{i}") for i in pending))
        pending = [i for i, answer in zip(pending, answers, strict=True) if answer.status_code != 200]
        if pending:
            await asyncio.sleep(0.5)
    if pending:
        raise RuntimeError(f"{len(pending)} episodes were not recorded within {timeout_s} s")


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    version: str  # what was asked for: "base" or "r3-vN"
    served_by: list[str]  # what the responses say served them (must all be `version`)
    first: list[bool]  # per held-out task, in order
    second: list[bool]
    score: list[float | None]  # the served answer's score (after the reflect-retry where there was one)
    seconds: float
    by_family: dict[str, dict[str, int]] = field(default_factory=dict)
    note: str = ""

    def summary(self) -> dict[str, Any]:
        n = len(self.first)
        k1, k2 = sum(self.first), sum(self.second)
        return {"version": self.version, "n": n, "seconds": round(self.seconds, 1),
                "served_by": dict(Counter(self.served_by)),
                "first_attempt": {"k": k1, "rate": k1 / n, "ci95": wilson(k1, n)},
                "second_attempt": {"k": k2, "rate": k2 / n, "ci95": wilson(k2, n)},
                "rescued": {"k": k2 - k1, "of_failures": n - k1}, "mean_score": mean_score(self.score),
                "by_family": self.by_family, "note": self.note,
                "outcomes": {"first": [int(x) for x in self.first], "second": [int(x) for x in self.second],
                             "score": self.score}}


async def evaluate_version(client: httpx.AsyncClient, heldout: list[suite.Task], version: str, config: Config) -> Evaluation:
    """`heldout` on `version` ("base" or a version's name), pinned by name."""
    return await evaluate_model(client, heldout, "base" if version == "base" else model_name(version), config, version)


async def evaluate_model(client: httpx.AsyncClient, heldout: list[suite.Task], model: str, config: Config,
                         label: str) -> Evaluation:
    """`heldout` sent as `model` (a version pinned, or a scenario: whatever it serves now), not stored;
    the evaluation is called `label`."""
    started = time.monotonic()
    outcomes = await send(client, heldout, model, config, store=False, temperature=config.eval_temperature)
    by_family: dict[str, dict[str, int]] = {}
    for task, outcome in zip(heldout, outcomes, strict=True):
        row = by_family.setdefault(task.family, {"n": 0, "first": 0, "second": 0})
        row["n"] += 1
        row["first"] += outcome.first
        row["second"] += outcome.second
    return Evaluation(label, [o.adapter for o in outcomes], [o.first for o in outcomes],
                      [o.second for o in outcomes], [o.score for o in outcomes], time.monotonic() - started, by_family)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def paired(before: list[bool], after: list[bool]) -> dict[str, Any]:
    """Two versions' outcomes on the same tasks: the tasks only `after` passed, those only `before`
    passed, and the exact McNemar (sign test on those discordant tasks) p-values: one-sided (H1:
    after > before) and two-sided (twice the smaller tail, at most 1)."""
    wins = sum(a and not b for b, a in zip(before, after, strict=True))
    losses = sum(b and not a for b, a in zip(before, after, strict=True))
    return {"after_only": wins, "before_only": losses, "p_one_sided": sign_test_p_value(wins, losses),
            "p_two_sided": min(1.0, 2 * min(sign_test_p_value(wins, losses), sign_test_p_value(losses, wins)))}


def mean_score(scores: list[float | None]) -> dict[str, Any]:
    """The mean of the judged scores (`n` of them; `unjudged` left out) and its Student-t 95% interval,
    mean ± t(0.975, n − 1) · s / √n (`scipy.stats.t.interval` with the standard error `scipy.stats.sem`;
    a point where every score is equal; None for fewer than 2 scores)."""
    from scipy import stats

    judged = [score for score in scores if score is not None]
    n = len(judged)
    mean = sum(judged) / n if n else None
    if n < 2:
        ci = None
    elif max(judged) == min(judged):
        ci = (mean, mean)
    else:
        low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(judged))
        ci = (float(low), float(high))
    return {"n": n, "unjudged": len(scores) - n, "mean": mean, "ci95": ci}


def paired_scores(before: list[float | None], after: list[float | None]) -> dict[str, Any]:
    """Per-task scores of two versions on the same tasks, compared (tasks judged for both):

    - `p_one_sided`: the Wilcoxon signed-rank test, H1: after > before (`scipy.stats.wilcoxon`,
      zero_method "wilcox": ties left out, as the sign test leaves them; a normal approximation with a
      tie correction where differences tie, exact otherwise for up to 50). It uses the differences'
      sizes as well as their signs, so a graded rise that the sign test would count as one win per
      task weighs by how far each task rose. 1.0 when every task ties. Source: F. Wilcoxon,
      "Individual comparisons by ranking methods", Biometrics Bulletin 1 (1945).
    - `mean_difference` and its 95% interval from the paired t-test (`scipy.stats.ttest_rel`;
      "Student", Biometrika 6, 1908), with the t-test's one-sided p beside it (None, and a point
      interval, where every difference is the same).
    """
    from scipy import stats

    pairs = [(b, a) for b, a in zip(before, after, strict=True) if b is not None and a is not None]
    differences = [a - b for b, a in pairs]
    row: dict[str, Any] = {"n": len(pairs), "after_higher": sum(d > 0 for d in differences),
                           "before_higher": sum(d < 0 for d in differences), "ties": differences.count(0.0),
                           "mean_difference": sum(differences) / len(pairs) if pairs else None}
    after_, before_ = [a for _, a in pairs], [b for b, _ in pairs]
    row["p_one_sided"] = (float(stats.wilcoxon(after_, before_, zero_method="wilcox", alternative="greater").pvalue)
                          if any(differences) else 1.0)
    if len(set(differences)) < 2:  # no spread (every task ties, or moved by the same amount): no t
        row["mean_difference_ci95"] = (row["mean_difference"],) * 2 if pairs else None
        row["t_test_p_one_sided"] = None
        return row
    low, high = stats.ttest_rel(after_, before_).confidence_interval(0.95)
    row["mean_difference_ci95"] = (float(low), float(high))
    row["t_test_p_one_sided"] = float(stats.ttest_rel(after_, before_, alternative="greater").pvalue)
    return row


def compare(before: Evaluation, after: Evaluation) -> dict[str, Any]:
    return {"before": before.version, "after": after.version,
            "first_attempt": paired(before.first, after.first),
            "second_attempt": paired(before.second, after.second),
            "score": paired_scores(before.score, after.score)}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def admin_get(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await client.get(path)
    response.raise_for_status()
    return response.json()


async def wait_serving(client: httpx.AsyncClient, version: str | None, timeout_s: float = 120,
                       scenario: str = DEFAULT_SCENARIO) -> None:
    """Until the server has hot-swapped `scenario` to `version` (None: the base model)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await admin_get(client, f"/admin/adapters?scenario={scenario}"))["active"] == version:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the server did not switch scenario {scenario} to {version or 'base'} within {timeout_s} s")


async def experiment(config: Config) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + config.minutes * 60
    data_dir = Path(tempfile.mkdtemp(prefix="r3-learn-"))
    admin_key = secrets.token_urlsafe(16)
    server = R3Server(config.server_settings(data_dir, admin_key))
    train_tasks, heldout = suite.split_suite(config.seed, config.batch * 6, config.heldout, config.families)
    log(f"data dir {data_dir}; {len(heldout)} held-out tasks; training stream of {len(train_tasks)}")

    evaluations: dict[str, Evaluation] = {}
    rounds: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    with server as url:
        timings["server_start_s"] = time.monotonic() - started
        async with httpx.AsyncClient(base_url=url, timeout=1800,
                                     headers={"Authorization": f"Bearer {admin_key}"}) as client:
            evaluations["base"] = await evaluate_version(client, heldout, "base", config)
            log(f"before training: {_line(evaluations['base'])}")
            active: str | None = None
            round_seconds: float | None = None
            seen_rounds: set[int | None] = {None}
            cursor = 0
            while True:
                left = deadline - time.monotonic()
                # A round is: collect, train + gate, evaluate what it produced. Start one only if the
                # last one's length still fits (the first always runs: there must be an "after").
                if rounds and (round_seconds is None or left < round_seconds):
                    log(f"{left / 60:.1f} min left, a round took {(round_seconds or 0) / 60:.1f}: stopping")
                    break
                round_started = time.monotonic()
                started_from = active
                batch = train_tasks[cursor:cursor + config.batch]
                cursor += config.batch
                if not batch:
                    log("the training stream is used up: stopping")
                    break
                collected = await send(client, batch, "r3", config, store=True)
                await wait_recorded(client, [o.episode_id for o in collected])
                collect_s = time.monotonic() - round_started
                log(f"round {len(rounds) + 1}: sent {len(batch)} training tasks to {active or 'base'}: "
                    f"first {sum(o.first for o in collected)}, second {sum(o.second for o in collected)} "
                    f"({collect_s:.0f} s)")
                code, train_s = train_once(server.env, data_dir, timeout_s=max(300.0, deadline - time.monotonic() + 300))
                state = await admin_get(client, "/admin/train?limit=1")
                last = state["rounds"][0] if state["rounds"] else {}
                if last.get("round") in seen_rounds:  # the trainer died before it recorded a round
                    last = {}
                seen_rounds.add(last.get("round"))
                candidate, promoted = last.get("candidate"), bool(last.get("promoted"))
                if promoted:
                    await wait_serving(client, candidate)
                # What the server serves now (an auto-rollback could have changed it too).
                active = (await admin_get(client, "/admin/adapters"))["active"]
                log(f"round {len(rounds) + 1}: trainer exit {code} in {train_s:.0f} s; candidate {candidate}, "
                    f"{'promoted' if promoted else 'not promoted'}: {last.get('report', {}).get('reason')}")
                eval_s = 0.0
                if candidate and candidate not in evaluations:  # pinned by name, promoted or not
                    evaluations[candidate] = await evaluate_version(client, heldout, candidate, config)
                    eval_s = evaluations[candidate].seconds
                    training = (last.get("report") or {}).get("training") or {}
                    if training.get("groups") and training.get("skipped_groups") == training.get("groups"):
                        # No group had both a passing and a failing retry, so no step changed the weights:
                        # the candidate is its starting adapter (a fresh LoRA is a no-op).
                        start = started_from or "a fresh LoRA, i.e. the base model"
                        evaluations[candidate].note = f"no training step updated it: the weights it started from " \
                                                      f"({start})"
                    log(f"  {candidate}: {_line(evaluations[candidate])} {evaluations[candidate].note}")
                rounds.append({
                    "round": len(rounds) + 1, "trainer_exit_code": code, "candidate": candidate, "promoted": promoted,
                    "active_after": active or "base",
                    "collected": {"tasks": len(batch), "served_by": dict(Counter(o.adapter for o in collected)),
                                  "first": sum(o.first for o in collected),
                                  "second": sum(o.second for o in collected)},
                    "training_round": last,
                    "seconds": {"collect": round(collect_s, 1), "train_gate": round(train_s, 1),
                                "evaluate": round(eval_s, 1), "total": round(time.monotonic() - round_started, 1)},
                })
                round_seconds = time.monotonic() - round_started
                if code != 0 and candidate is None:
                    log("the round produced no candidate; stopping")
                    break
            # Time left for less than a round but more than an evaluation: the base model again, to see
            # how much two greedy runs of one version differ (batching changes float rounding).
            repeat = None
            if deadline - time.monotonic() > 1.2 * evaluations["base"].seconds:
                repeat = await evaluate_version(client, heldout, "base", config)
                log(f"base again: {_line(repeat)}")
            adapters = await admin_get(client, "/admin/adapters")
            actions = await admin_get(client, "/admin/actions")
    timings["total_s"] = time.monotonic() - started
    result = report(config, heldout, evaluations, rounds, adapters, actions, timings, data_dir)
    if repeat is not None:
        result["base_repeat"] = {**repeat.summary(), "vs_first_base_run": compare(evaluations["base"], repeat)}
    return result


# ---------------------------------------------------------------------------------------------
# The planted suite: one round of the loop, and the same round with shuffled rewards
# ---------------------------------------------------------------------------------------------


def snapshot(data_dir: Path, into: Path) -> None:
    """Copy R3's embedded store (SQLite, through its backup API, safe while the server writes) and
    adapters from `data_dir` into `into`: a second loop that starts where this one stands."""
    import shutil
    import sqlite3

    into.mkdir(parents=True)
    with sqlite3.connect(data_dir / "r3.db") as source, sqlite3.connect(into / "r3.db") as target:
        source.backup(target)
    if (data_dir / "adapters").exists():
        shutil.copytree(data_dir / "adapters", into / "adapters")


async def last_round(client: httpx.AsyncClient) -> dict[str, Any]:
    state = await admin_get(client, "/admin/train?limit=1")
    return state["rounds"][0] if state["rounds"] else {}


def _round_summary(row: dict[str, Any], code: int | None, seconds: float) -> dict[str, Any]:
    report = row.get("report") or {}
    training = report.get("training") or {}
    return {"trainer_exit_code": code, "seconds": round(seconds, 1), "candidate": row.get("candidate"),
            "promoted": bool(row.get("promoted")), "canary": bool(report.get("canary")),
            "reason": report.get("reason") or report.get("skipped"),
            "gate": report.get("gate"), "training": training, "counts": {k: report.get(k) for k in
                                                                        ("train", "heldout", "regression")}}


async def train_scenario(client: httpx.AsyncClient, env: dict[str, str], data_dir: Path, scenario: str,
                         timeout_s: float, tries: int = 3) -> tuple[dict[str, Any], int, float]:
    """One round of `scenario`, as an admin asks for it: `POST /admin/train?scenario=`, taken up by an
    `r3 train` started for it (`r3 train --once` trains the default scenario only), stopped once the
    round has ended. Its own rounds are held off (R3_TRAIN_MIN_FAILURES and R3_TRAIN_INTERVAL_S out of
    reach), so it runs the requested one alone. A trainer that dies first (on a shared machine, the
    kernel's OOM killer) leaves its round running and the failures untrained: after
    R3_TRAIN_STALE_AFTER_S the round is asked for again, which fails the abandoned one, and a new
    trainer runs it, `tries` times in all. (the round's row; how many trainers died before it ended;
    seconds). Raises
    RuntimeError if the round has not ended within `timeout_s`, or every trainer died first."""
    started = time.monotonic()
    env = {**env, "R3_TRAIN_MIN_FAILURES": str(10 ** 9), "R3_TRAIN_INTERVAL_S": str(10 ** 12)}
    stale_after_s = float(env.get("R3_TRAIN_STALE_AFTER_S", 120))
    for attempt in range(tries):
        response = await client.post(f"/admin/train?scenario={scenario}")
        response.raise_for_status()
        round_id = response.json()["round"]
        row = await _run_trainer(client, env, data_dir, scenario, round_id, started + timeout_s)
        if row is not None:
            return row, attempt, time.monotonic() - started
        log(f"r3 train died before round {round_id} of {scenario} ended (see {data_dir / 'trainer.log'}); asking "
            f"again once the round is stale ({stale_after_s:.0f} s)")
        await asyncio.sleep(stale_after_s + 5)
    raise RuntimeError(f"r3 train died {tries} times before a round of {scenario} ended; see {data_dir / 'trainer.log'}")


async def _run_trainer(client: httpx.AsyncClient, env: dict[str, str], data_dir: Path, scenario: str, round_id: int,
                       deadline: float) -> dict[str, Any] | None:
    """`r3 train` until round `round_id` of `scenario` has ended (its row), or None if it died first;
    stopped either way. Raises RuntimeError at `deadline` (monotonic)."""
    with open(data_dir / "trainer.log", "ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "r3", "train"], cwd=REPO, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT)
        try:
            while True:
                rows = (await admin_get(client, f"/admin/train?scenario={scenario}&limit=5"))["rounds"]
                row = next((r for r in rows if r["round"] == round_id), {})
                if row.get("status") in ("finished", "failed"):
                    return row
                if process.poll() is not None:
                    return None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"round {round_id} of {scenario} did not end in time")
                await asyncio.sleep(2)
        finally:
            stop(process, grace_s=30)


async def canary_phase(client: httpx.AsyncClient, scenario: str, model: str, tasks: list[suite.Task],
                       config: Config, patience: float) -> dict[str, Any]:
    """The live canary of `scenario` (the gate accepted its candidate with R3_CANARY_FRACTION > 0):
    `tasks` sent as `model`, unpinned and stored (the test counts stored episodes), `concurrency`
    at a time at `eval_temperature`, until the server's sequential test ends the canary
    (`GET /admin/canary`, read after each batch has been recorded), the tasks run out or `patience`
    seconds pass; then, if it was promoted, until the server serves its version. Returns the
    decision, the episodes the test had counted when it decided (each side's), the requests sent,
    who served them, and every look at the test. Raises RuntimeError if the episodes are not
    recorded or a promoted version is not served within `patience`."""
    started = time.monotonic()
    looks: list[dict[str, Any]] = []
    outcomes: list[Outcome] = []
    path = f"/admin/canary?scenario={scenario}"
    state = await admin_get(client, path)
    for start in range(0, len(tasks), config.concurrency):
        if state["state"] != "running" or time.monotonic() - started > patience:
            break
        batch = await send(client, tasks[start:start + config.concurrency], model, config, store=True,
                           temperature=config.eval_temperature, first_seed=start)
        await wait_recorded(client, [o.episode_id for o in batch], patience)
        outcomes += batch
        # The watch runs every R3_CANARY_CHECK_S: give it one look at this batch before reading it.
        await asyncio.sleep(config.canary_check_s)
        state = await admin_get(client, path)
        looks.append({"sent": len(outcomes), "seconds": round(time.monotonic() - started, 1),
                      "decision": state["decision"], "state": state["state"],
                      "comparisons": state["comparisons"]})
        log(f"canary {state['version']} in {scenario}: {len(outcomes)} sent, {state['state']} "
            f"({state['decision']}): " + "; ".join(
                f"{c['measure']} {c['canary_mean']:.2f} (n={c['canary_n']}) vs {c['current_mean']:.2f} "
                f"(n={c['current_n']}), log Λ(−margin) {c['not_worse_statistic']:.2f} / {c['boundary']:.2f}"
                for c in state["comparisons"]))
    first = next((c for c in state["comparisons"] if c["measure"] == "first_attempt_score"), None)
    if state["state"] == "promoted":
        await wait_serving(client, state["version"], patience, scenario)
    served = dict(Counter(o.adapter for o in outcomes))
    return {"scenario": scenario, "version": state["version"], "baseline": state["baseline"],
            "fraction": state["fraction"], "state": state["state"], "decided_by": state["decided_by"],
            "decision": state["decision"], "reason": state["reason"], "comparisons": state["comparisons"],
            "episodes_to_decision": ({"canary": first["canary_n"], "current": first["current_n"],
                                      "total": first["canary_n"] + first["current_n"]} if first else None),
            "sent": len(outcomes), "served_by": served, "looks": looks,
            "active_after": (await admin_get(client, f"/admin/adapters?scenario={scenario}"))["active"] or "base",
            "seconds": round(time.monotonic() - started, 1)}


async def planted_experiment(config: Config) -> dict[str, Any]:
    """`--suite planted`: serve → fail → reflect → retry → record → `r3 train --once` → gate →
    hot-swap, once; then (`control`) the same round from a copy of the same store with
    R3_TRAIN_SHUFFLE_REWARDS=true. Held-out tasks (first attempt always failed) are evaluated on
    the base, the trained candidate and the control candidate, pinned by name; `live` new requests
    go to the active version after the swap. With `canary_fraction` > 0 an accepted candidate is
    first a live canary, and live requests go to the default scenario until the server's test
    decides (`canary_phase`). `config.reward` picks the planted rule (`planted.verdict`). Raises
    RuntimeError if a process fails to start, an episode is not recorded or the server does not
    swap to a promoted candidate."""
    started = time.monotonic()
    # How long to wait for any one thing (a request, a round, a swap): `minutes`, which is sized for a
    # quiet machine and stretches on a shared, loaded one; nothing here waits longer than it must.
    patience = config.minutes * 60
    data_dir = Path(tempfile.mkdtemp(prefix="r3-learn-planted-"))
    admin_key = secrets.token_urlsafe(16)
    timings: dict[str, float] = {}
    loads = {"start": os.getloadavg()}
    with planted.planted_verifier() as url:
        pool = canary_pool(config)
        train_tasks, held = planted.split_planted(config.seed, config.batch, config.heldout + config.live + pool, url,
                                                  config.reward)
        heldout, live_tasks = held[:config.heldout], held[config.heldout:config.heldout + config.live]
        canary_tasks = held[config.heldout + config.live:]
        server = R3Server(config.server_settings(data_dir, admin_key))
        headers = {"Authorization": f"Bearer {admin_key}"}
        log(f"data dir {data_dir}; verifier {url}; {len(heldout)} held-out, {len(train_tasks)} training tasks")
        with server as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=patience, headers=headers) as client:
                base = await evaluate_version(client, heldout, "base", config)
                log(f"before training: {_line(base)}")
                collected = await send(client, train_tasks, "r3", config, store=True)
                await wait_recorded(client, [o.episode_id for o in collected], patience)
                log(f"sent {len(collected)} training tasks: first {sum(o.first for o in collected)}, "
                    f"second {sum(o.second for o in collected)}")
                control_dir = data_dir.with_name(data_dir.name + "-control")
                if config.control:
                    snapshot(data_dir, control_dir)
                code, train_s = train_once(server.env, data_dir, timeout_s=patience)
                trained = _round_summary(await last_round(client), code, train_s)
                log(f"round: exit {code} in {train_s:.0f} s; {trained['candidate']} "
                    f"{'a live canary' if trained['canary'] else 'promoted' if trained['promoted'] else 'not promoted'}"
                    f": {trained['reason']}")
                evaluations = {"base": base}
                live: dict[str, Any] = {}
                canary: dict[str, Any] = {}
                if trained["candidate"]:
                    evaluations["trained"] = await evaluate_version(client, heldout, trained["candidate"], config)
                    log(f"{trained['candidate']} (pinned): {_line(evaluations['trained'])}")
                if trained["canary"]:
                    canary = await canary_phase(client, DEFAULT_SCENARIO, "r3", canary_tasks, config, patience)
                elif trained["promoted"]:
                    await wait_serving(client, trained["candidate"], patience)
                if canary.get("state") == "promoted" if trained["canary"] else trained["promoted"]:
                    active = (await admin_get(client, "/admin/adapters"))["active"]
                    outcomes = await send(client, live_tasks, "r3", config, store=False,
                                          temperature=config.eval_temperature)
                    k = sum(o.second for o in outcomes)
                    live = {"active": active, "n": len(outcomes), "k": k, "rate": k / len(outcomes),
                            "ci95": wilson(k, len(outcomes)), "mean_score": mean_score([o.score for o in outcomes]),
                            "served_by": dict(Counter(o.adapter for o in outcomes))}
                    log(f"live after the swap to {active}: {k}/{len(outcomes)}, mean score "
                        f"{_mean(live['mean_score'])}, served by {live['served_by']}")
        timings["trained_loop_s"] = time.monotonic() - started
        loads["trained_loop"] = os.getloadavg()
        control: dict[str, Any] = {}
        if config.control:
            control_env = {**server.env, "R3_DATA_DIR": str(control_dir), "R3_TRAIN_SHUFFLE_REWARDS": "true"}
            code, control_s = train_once(control_env, control_dir, timeout_s=patience)
            control_server = R3Server({k: v for k, v in control_env.items() if k.startswith("R3_") and k != "R3_PORT"})
            with control_server as control_url:
                async with httpx.AsyncClient(base_url=control_url, timeout=patience, headers=headers) as client:
                    control = _round_summary(await last_round(client), code, control_s)
                    log(f"control round: exit {code} in {control_s:.0f} s; {control['candidate']} "
                        f"{'promoted' if control['promoted'] else 'not promoted'}: {control['reason']}")
                    if control["candidate"]:
                        evaluations["control"] = await evaluate_version(client, heldout, control["candidate"], config)
                        log(f"control {control['candidate']} (pinned): {_line(evaluations['control'])}")
    timings["total_s"] = time.monotonic() - started
    loads["end"] = os.getloadavg()
    zero = planted.GRADED_ZERO_WORDS
    return {
        "experiment": "r3 bench learn --suite planted", "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(), "load_average": loads, "config": {**asdict(config), "families": list(config.families)},
        "planted_rule": {"reward": config.reward, "max_words": planted.MAX_WORDS,
                         **({"score": f"clamp(({zero} - words) / {zero}, 0, 1)",
                             "pass_threshold": planted.PASS_THRESHOLD} if config.reward == "graded" else {}),
                         "verifier": "webhook (bench/planted.py) on 127.0.0.1",
                         "example": {"messages": heldout[0].messages, "verifier": heldout[0].verifier}},
        "definitions": {"heldout_success": "second attempt passes = the reflection has at most "
                        f"{planted.MAX_WORDS} words (attempt 1 always fails), sampled at T = {config.eval_temperature}"
                        ", seeded per task", "ci95": "Wilson score interval",
                        "p_one_sided": "exact McNemar (sign test on discordant tasks), H1: after > base",
                        "mean_score": "mean over held-out tasks of the retry's score (graded: of its reflection's "
                        "length; binary: 1 or 0), Student-t 95% interval",
                        "score_p_one_sided": "Wilcoxon signed-rank on the per-task score differences (ties left "
                        "out), H1: after > base (comparisons.*.score; bench.learn.paired_scores)"},
        "collected": {"tasks": len(collected), "first": sum(o.first for o in collected),
                      "second": sum(o.second for o in collected)},
        "rounds": {"trained": trained, **({"control": control} if config.control else {})},
        "canary": canary,
        "evaluations": {name: e.summary() for name, e in evaluations.items()},
        "comparisons": {name: compare(base, e) for name, e in evaluations.items() if name != "base"},
        "live_after_swap": live, "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "data_dirs": [str(data_dir), *([str(control_dir)] if config.control else [])],
    }


def canary_pool(config: Config) -> int:
    """How many live requests a canary phase may send: enough for the canary to reach
    `canary_max_episodes` (where the test gives up) at its share of the traffic, and a batch more;
    0 without a canary."""
    if config.canary_fraction <= 0:
        return 0
    return math.ceil(1.25 * config.canary_max_episodes / config.canary_fraction) + config.concurrency


# `--scenarios 2`: scenario name -> the planted rule its tasks are judged by (`planted.RULES`), and
# what its reflections are rewarded for.
SCENARIOS = {"short": "short", "value": "value"}
RULE_LABELS = {"short": f"the reflection has at most {planted.MAX_WORDS} words",
               "value": "the reflection names the failing value (the failed answer's number)"}
RULE_DESCRIPTIONS = {rule: f"planted: retries pass iff {label}" for rule, label in RULE_LABELS.items()}


async def scenarios_experiment(config: Config) -> dict[str, Any]:
    """`--suite planted --scenarios 2`: two scenarios on one server (`SCENARIOS`), each with its own
    planted rule, traffic, round and adapter lineage. Each scenario's held-out set is evaluated on the
    base model; each scenario's training tasks are sent as its model (recorded in its scenario); each
    scenario's round (`train_scenario`), gated, and with `canary_fraction` > 0 its live canary
    (`canary_phase`); then every held-out set is sent to every scenario's model, unpinned, so each
    is evaluated on what each scenario serves (its own lineage and the other's), and the responses
    say which version served them. A candidate that ends up not served is also evaluated pinned, on
    its own held-out set. Raises RuntimeError as `planted_experiment` does, and ValueError for a
    reward other than binary (the `value` rule is pass/fail)."""
    if config.reward != "binary":
        raise ValueError("--scenarios 2 runs the binary reward (the value rule has no graded form)")
    started = time.monotonic()
    patience = config.minutes * 60  # any one wait (`planted_experiment`)
    data_dir = Path(tempfile.mkdtemp(prefix="r3-learn-scenarios-"))
    admin_key = secrets.token_urlsafe(16)
    timings: dict[str, float] = {}
    loads = {"start": os.getloadavg()}
    with planted.planted_verifier() as url:
        pool = canary_pool(config)
        tasks: dict[str, dict[str, list[suite.Task]]] = {}
        for index, (name, rule) in enumerate(SCENARIOS.items()):
            train, held = planted.split_planted(config.seed + index, config.batch, config.heldout + pool, url, rule=rule)
            tasks[name] = {"train": train, "heldout": held[:config.heldout], "canary": held[config.heldout:]}
        server = R3Server(config.server_settings(data_dir, admin_key))
        headers = {"Authorization": f"Bearer {admin_key}"}
        log(f"data dir {data_dir}; verifier {url}; scenarios {', '.join(SCENARIOS)}: {config.heldout} held-out and "
            f"{config.batch} training tasks each")
        with server as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=patience, headers=headers) as client:
                for name, rule in SCENARIOS.items():
                    created = await client.post("/admin/scenarios", json={"name": name,
                                                                         "description": RULE_DESCRIPTIONS[rule]})
                    created.raise_for_status()
                base: dict[str, Evaluation] = {}
                for name in SCENARIOS:
                    base[name] = await evaluate_model(client, tasks[name]["heldout"], name, config, "base")
                    log(f"{name} held-out before training: {_line(base[name])}")
                collected: dict[str, dict[str, Any]] = {}
                for name in SCENARIOS:
                    outcomes = await send(client, tasks[name]["train"], name, config, store=True)
                    await wait_recorded(client, [o.episode_id for o in outcomes], patience)
                    collected[name] = {"tasks": len(outcomes), "first": sum(o.first for o in outcomes),
                                       "second": sum(o.second for o in outcomes),
                                       "served_by": dict(Counter(o.adapter for o in outcomes))}
                    log(f"sent {len(outcomes)} training tasks as {name}: {collected[name]}")
                timings["baseline_and_collect_s"] = time.monotonic() - started
                rounds: dict[str, dict[str, Any]] = {}
                canaries: dict[str, dict[str, Any]] = {}
                for name in SCENARIOS:
                    row, died, seconds = await train_scenario(client, server.env, data_dir, name, patience)
                    # r3 train is stopped once its round has ended: its exit code says nothing.
                    rounds[name] = {**_round_summary(row, None, seconds), "trainers_died_first": died}
                    decided = ("a live canary" if rounds[name]["canary"] else
                               "promoted" if rounds[name]["promoted"] else "not promoted")
                    log(f"round of {name}: {seconds:.0f} s; {rounds[name]['candidate']} {decided}: "
                        f"{rounds[name]['reason']}")
                    loads[f"round_{name}"] = os.getloadavg()
                    if rounds[name]["canary"]:
                        canaries[name] = await canary_phase(client, name, name, tasks[name]["canary"], config, patience)
                        loads[f"canary_{name}"] = os.getloadavg()
                    elif rounds[name]["promoted"]:
                        await wait_serving(client, rounds[name]["candidate"], patience, name)
                timings["rounds_and_canaries_s"] = time.monotonic() - started - timings["baseline_and_collect_s"]
                served = {name: (await admin_get(client, f"/admin/adapters?scenario={name}"))["active"] or "base"
                          for name in SCENARIOS}
                evaluations: dict[str, dict[str, Evaluation]] = {name: {"base": base[name]} for name in SCENARIOS}
                for held_of in SCENARIOS:
                    for model in SCENARIOS:
                        evaluation = await evaluate_model(client, tasks[held_of]["heldout"], model, config, served[model])
                        evaluations[held_of][model] = evaluation
                        log(f"{held_of} held-out sent as {model}: {_line(evaluation)}, served by "
                            f"{dict(Counter(evaluation.served_by))}")
                for name in SCENARIOS:
                    candidate = rounds[name]["candidate"]
                    if candidate and candidate != served[name]:
                        evaluations[name]["candidate"] = await evaluate_version(client, tasks[name]["heldout"],
                                                                                candidate, config)
                        log(f"{name} held-out on {candidate} (pinned, not served): "
                            f"{_line(evaluations[name]['candidate'])}")
                adapters = {name: (await admin_get(client, f"/admin/adapters?scenario={name}"))["data"]
                            for name in SCENARIOS}
                actions = (await admin_get(client, "/admin/actions?limit=50"))["data"]
    timings["total_s"] = time.monotonic() - started
    loads["end"] = os.getloadavg()
    return {
        "experiment": "r3 bench learn --suite planted --scenarios 2",
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "load_average": loads,
        "config": {**asdict(config), "families": list(config.families)},
        "scenarios": {name: {"rule": rule, "description": RULE_DESCRIPTIONS[rule],
                             "example": {"messages": tasks[name]["heldout"][0].messages,
                                         "verifier": tasks[name]["heldout"][0].verifier},
                             "collected": collected[name], "round": rounds[name], "canary": canaries.get(name, {}),
                             "served_after": served[name], "versions": adapters[name]}
                      for name, rule in SCENARIOS.items()},
        "definitions": {
            "heldout_success": "the retry after one reflection passes its scenario's rule (attempt 1 always "
                               f"fails), sampled at T = {config.eval_temperature}, seeded per task",
            "evaluations": "evaluations[held-out of scenario][sent as model]: 'base' before any training; "
                           "<scenario>: after both rounds, unpinned, whatever that scenario served (served_by)",
            "ci95": "Wilson score interval",
            "p_one_sided": "exact McNemar (sign test on discordant tasks), H1: after > base",
            "p_two_sided": "exact McNemar, two-sided: did it move at all",
            "episodes_to_decision": "judged episodes of each side the canary test had counted when it decided"},
        "evaluations": {held_of: {label: e.summary() for label, e in row.items()}
                        for held_of, row in evaluations.items()},
        "comparisons": {held_of: {label: compare(row["base"], e) for label, e in row.items() if label != "base"}
                        for held_of, row in evaluations.items()},
        "admin_actions": actions, "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "data_dir": str(data_dir),
    }


def _planted_measure(result: dict[str, Any]) -> tuple[str, Any]:
    """What the planted run's held-out results are read as: ("score", a summary's mean score with its
    t interval) for the graded reward, ("rate", its second-attempt pass rate with Wilson's) otherwise.
    Each as a function of an evaluation's summary (or the live requests') -> (value, ci95, label)."""
    if result["planted_rule"].get("reward") == "graded":
        return "score", lambda e: (e["mean_score"]["mean"], e["mean_score"]["ci95"], f"{e['mean_score']['mean']:.3f}")
    return "rate", lambda e: (e["second_attempt"]["rate"], e["second_attempt"]["ci95"],
                              f"{e['second_attempt']['k']}/{e['n']}")


def plot_planted(result: dict[str, Any], path: Path) -> None:
    """Left: held-out success (binary reward) or mean score (graded) of the base, trained and control
    versions, and of the live requests after the swap, with 95% CIs. Right: the mean reward of each
    GRPO step of the trained and the control round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind, measure = _planted_measure(result)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    bars = [(name, *measure(e)) for name, e in result["evaluations"].items()]
    if result["live_after_swap"]:
        live = result["live_after_swap"]
        bars.append(("live, after swap", *measure({**live, "second_attempt": live})))
    values = [b[1] for b in bars]
    left.bar(range(len(bars)), values, yerr=[[v - b[2][0] for v, b in zip(values, bars)],
                                             [b[2][1] - v for v, b in zip(values, bars)]],
             capsize=5, color=["tab:gray", "tab:orange", "tab:blue", "tab:green"][:len(bars)])
    left.set_xticks(range(len(bars)), [f"{b[0]}\n{b[3]}" for b in bars])
    left.set_ylim(0, 1)
    rule = result["planted_rule"]
    if kind == "score":
        left.set_ylabel(f"mean retry score, {rule['score']}")
        left.set_title("held-out, T = 1, Student-t 95%", fontsize=10)
    else:
        left.set_ylabel(f"retry passes (reflection ≤ {rule['max_words']} words)")
        left.set_title("held-out, T = 1, Wilson 95%", fontsize=10)
    for name, colour in (("trained", "tab:orange"), ("control", "tab:blue")):
        if name not in result["rounds"]:  # run without the control
            continue
        rewards = result["rounds"][name]["training"].get("reward_mean") or []
        right.plot(range(1, len(rewards) + 1), rewards, marker="o", color=colour,
                   label=f"{name}{' (rewards shuffled in each group)' if name == 'control' else ''}")
    right.set_xlabel("GRPO step")
    right.set_ylabel("mean reward of the step's G × prompts reflections")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    right.set_title("training reward per step", fontsize=10)
    fig.suptitle(f"R3's loop on the planted suite, {rule.get('reward', 'binary')} reward "
                 "(SmolLM2-135M-Instruct, CPU)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scenarios(result: dict[str, Any], path: Path) -> None:
    """Left: each scenario's held-out success (its own rule) before training and after, as each
    scenario's model served it, with Wilson 95% CIs. Middle: the mean reward of each GRPO step of
    each scenario's round. Right: each live canary's test statistics, log Λ(−margin) of both
    outcomes, against the requests sent, up to the boundary where it decided."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["scenarios"])
    colours = dict(zip(names, ["tab:orange", "tab:blue", "tab:green"]))
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8))
    width = 0.8 / (1 + len(names))
    for group, held_of in enumerate(names):
        row = result["evaluations"][held_of]
        for slot, (label, colour) in enumerate([("base", "tab:gray"), *((n, colours[n]) for n in names)]):
            e = row[label]
            rate, (low, high) = e["second_attempt"]["rate"], e["second_attempt"]["ci95"]
            x = group + (slot - len(names) / 2) * width
            left.bar(x, rate, width, yerr=[[rate - low], [high - rate]], capsize=3, color=colour,
                     label=(f"served by {label}'s model" if label != "base" else "base, before training")
                     if group == 0 else None)
            version = "base" if label == "base" else e["version"]
            left.text(x, 0.02, f"{e['second_attempt']['k']}/{e['n']}  {version}", ha="center", fontsize=7,
                      rotation=90)
    left.set_xticks(range(len(names)), ["held-out of " + n + ":\n" + textwrap.fill(RULE_LABELS[result["scenarios"][n]["rule"]], 28)
                                        for n in names], fontsize=8)
    left.set_ylim(0, 1)
    left.set_ylabel("retry passes its scenario's rule")
    left.legend(fontsize=7, loc="upper right")
    left.set_title("held-out, T = 1, Wilson 95%", fontsize=10)
    for name in names:
        rewards = result["scenarios"][name]["round"]["training"].get("reward_mean") or []
        middle.plot(range(1, len(rewards) + 1), rewards, marker="o", color=colours[name], label=f"{name}'s round")
    middle.set_xlabel("GRPO step")
    middle.set_ylabel("mean reward of the step's reflections")
    middle.set_ylim(0, 1)
    middle.legend(fontsize=8)
    middle.set_title("training reward per step", fontsize=10)
    boundary = None
    for name in names:
        canary = result["scenarios"][name]["canary"]
        for measure, style in (("first_attempt_score", ":"), ("rescue_rate", "-")):
            points = [(look["sent"], c["not_worse_statistic"]) for look in canary.get("looks", [])
                      for c in look["comparisons"] if c["measure"] == measure]
            if points:
                boundary = next(c["boundary"] for look in canary["looks"] for c in look["comparisons"])
                right.plot(*zip(*points), style, marker=".", color=colours[name],
                           label=f"{name}: {measure.replace('_', ' ')}")
        if canary.get("looks"):
            right.annotate(f"{canary['state']}\n({canary['episodes_to_decision']['total']} episodes)",
                           (canary["looks"][-1]["sent"], boundary), fontsize=7, color=colours[name],
                           textcoords="offset points", xytext=(-40, 8 + 18 * names.index(name)))
    if boundary is not None:
        right.axhline(boundary, color="black", linewidth=0.8)
        right.text(0.01, boundary, "boundary log(2/α)", fontsize=7, va="bottom", transform=right.get_yaxis_transform())
        right.set_ylim(-4, boundary + 3)
    right.set_xlabel("live requests sent to the scenario (unpinned)")
    right.set_ylabel("log Λ(−margin): not worse than the margin")
    right.legend(fontsize=7, loc="lower right")
    right.set_title(f"live canary, {result['config']['canary_fraction']:g} of the traffic", fontsize=10)
    fig.suptitle("Two scenarios, two lineages: R3's loop on two planted rules at once (SmolLM2-135M-Instruct, CPU)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_scenarios(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    table = Table(title=f"r3 bench learn --suite planted --scenarios 2: held-out (n = {result['config']['heldout']} "
                        "each), retry passes, Wilson 95% CIs")
    for column in ("held-out of", "sent as", "served by", "retry passes [95% CI]", "+/− vs base", "p (1-sided)",
                   "p (2-sided)"):
        table.add_column(column)
    for held_of, row in result["evaluations"].items():
        for label, e in row.items():
            pair = result["comparisons"][held_of].get(label, {}).get("second_attempt")
            table.add_row(held_of, label, ", ".join(f"{k} ×{v}" for k, v in e["served_by"].items()),
                          _rate(e["second_attempt"], e["n"]),
                          f"+{pair['after_only']} / −{pair['before_only']}" if pair else "",
                          f"{pair['p_one_sided']:.3g}" if pair else "", f"{pair['p_two_sided']:.3g}" if pair else "")
    console.print(table)
    for name, scenario in result["scenarios"].items():
        round_, canary = scenario["round"], scenario["canary"]
        gate = round_.get("gate") or {}
        if round_["candidate"] is None:
            console.print(f"{name}: round {round_['seconds']:.0f} s, no candidate: {round_['reason']}")
        else:
            console.print(f"{name}: round {round_['seconds']:.0f} s, {round_['candidate']}: "
                          f"{'accepted' if round_['promoted'] else 'rejected'} by the gate ({round_['reason']}; "
                          f"p = {gate.get('p_value', float('nan')):.3g})")
        if canary:
            console.print(f"  canary: {canary['state']} by {canary['decided_by']} after "
                          f"{canary['episodes_to_decision']} episodes ({canary['sent']} sent, served by "
                          f"{canary['served_by']}, {canary['seconds']:.0f} s): {canary['reason']}")
        console.print(f"  served after: {scenario['served_after']}")


def print_planted(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    kind, measure = _planted_measure(result)
    what = "mean retry score, Student-t" if kind == "score" else "second-attempt success, Wilson"
    table = Table(title=f"r3 bench learn --suite planted: held-out (n = {result['config']['heldout']}), "
                        f"{what} 95% CIs")
    for column in ("version", "held-out [95% CI]", "+/− vs base", "p (1-sided)", "gate", "s"):
        table.add_column(column)
    for name, e in result["evaluations"].items():
        pair = result["comparisons"].get(name, {}).get("score" if kind == "score" else "second_attempt")
        round_ = result["rounds"].get(name, {})
        if kind == "score":
            _, (low, high), label = measure(e)
            cell = f"{label} [{low:.3f}, {high:.3f}]"
            versus = f"+{pair['after_higher']} / −{pair['before_higher']}" if pair else ""
        else:
            cell = _rate(e["second_attempt"], e["n"])
            versus = f"+{pair['after_only']} / −{pair['before_only']}" if pair else ""
        table.add_row(f"{name} {e['version']}", cell, versus,
                      f"{pair['p_one_sided']:.3g}" if pair else "",
                      ("promoted" if round_.get("promoted") else f"rejected: {round_.get('reason')}") if round_ else "",
                      str(round_.get("seconds", "")))
    console = Console(width=170)
    console.print(table)
    if canary := result.get("canary"):
        console.print(f"canary {canary['version']}: {canary['state']} by {canary['decided_by']} after "
                      f"{canary['episodes_to_decision']} episodes ({canary['sent']} sent, served by "
                      f"{canary['served_by']}): {canary['reason']}")


def _line(evaluation: Evaluation) -> str:
    s = evaluation.summary()
    return (f"first {s['first_attempt']['k']}/{s['n']}, second {s['second_attempt']['k']}/{s['n']}, "
            f"mean score {_mean(s['mean_score'])} ({evaluation.seconds:.0f} s)")


def _mean(summary: dict[str, Any]) -> str:
    return "—" if summary["mean"] is None else f"{summary['mean']:.3f}"


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def report(config: Config, heldout: list[suite.Task], evaluations: dict[str, Evaluation],
           rounds: list[dict[str, Any]], adapters: dict[str, Any], actions: dict[str, Any],
           timings: dict[str, float], data_dir: Path) -> dict[str, Any]:
    base = evaluations["base"]
    # The curve: after round k, the version then active (the base model until one is promoted).
    curve = [{"round": 0, "active": "base", **_point(base)}]
    for r in rounds:
        curve.append({"round": r["round"], "active": r["active_after"], **_point(evaluations[r["active_after"]])})
    candidates = [{"round": r["round"], "candidate": r["candidate"], **_point(evaluations[r["candidate"]])}
                  for r in rounds if r["candidate"] in evaluations]
    final_active = rounds[-1]["active_after"] if rounds else "base"
    comparisons = {"final_active_vs_base": compare(base, evaluations[final_active])}
    if candidates:
        last = candidates[-1]["candidate"]
        comparisons["last_candidate_vs_base"] = compare(base, evaluations[last])
    return {
        "experiment": "r3 bench learn",
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "config": {**asdict(config), "families": list(config.families)},
        "suite": {
            "families": list(config.families),
            "tool_tasks": {"tool_choice": suite.TOOL_CHOICE, "tools_offered": suite.OFFERED,
                           "worked_example_shown": suite.TOOL_DEMO},
            "verifiers": sorted({t.verifier["type"] for t in heldout}), "heldout": len(heldout),
            "heldout_by_family": dict(Counter(t.family for t in heldout)),
            "heldout_seed": config.seed + 1_000_003, "train_seed": config.seed,
            "example": {"messages": heldout[0].messages, "verifier": heldout[0].verifier},
        },
        "definitions": {
            "first_attempt": "attempt 1 passes the verifier (greedy)",
            "second_attempt": "attempt 1 passes, or attempt 2 after one reflection passes (greedy)",
            "ci95": "Wilson score interval",
            "p_one_sided": "exact McNemar (sign test on discordant tasks), H1: after > before",
        },
        "curve": curve,
        "candidates": candidates,
        "comparisons": comparisons,
        "rounds": rounds,
        "evaluations": {name: e.summary() for name, e in evaluations.items()},
        "adapters": adapters.get("data", []),
        "admin_actions": actions.get("data", []),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "data_dir": str(data_dir),
    }


def _point(evaluation: Evaluation) -> dict[str, Any]:
    s = evaluation.summary()
    return {"version": evaluation.version, "n": s["n"], "first_attempt": s["first_attempt"],
            "second_attempt": s["second_attempt"]}


def _rate(part: dict[str, Any], n: int) -> str:
    low, high = part["ci95"]
    return f"{part['k']}/{n} = {100 * part['rate']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    table = Table(title=f"r3 bench learn: held-out {'+'.join(result['suite']['families'])} tasks "
                        f"(n = {result['suite']['heldout']}), greedy, 95% Wilson CIs")
    for column in ("round", "version", "how", "first attempt [95% CI]", "second attempt [95% CI]", "rescued",
                   "2nd vs base +/−", "p (1-sided)"):
        table.add_column(column)
    evaluations = result["evaluations"]
    base = evaluations["base"]

    def row(label: str, version: str, how: str) -> None:
        e = evaluations[version]
        f, s = e["first_attempt"], e["second_attempt"]
        if version == "base":
            versus, p = "", ""
        else:
            pair = paired([bool(x) for x in base["outcomes"]["second"]], [bool(x) for x in e["outcomes"]["second"]])
            versus, p = f"+{pair['after_only']} / −{pair['before_only']}", f"{pair['p_one_sided']:.3g}"
        table.add_row(label, version, how,
                      _rate(f, e["n"]), _rate(s, e["n"]),
                      f"{e['rescued']['k']}/{e['rescued']['of_failures']}", versus, p)

    row("0 (before)", "base", "no adapter")
    for r in result["rounds"]:
        if r["candidate"] in evaluations:
            how = "promoted, active" if r["promoted"] else "rejected by the gate, pinned"
            row(str(r["round"]), r["candidate"], how)
    console.print(table)

    rounds = Table(title="training rounds (r3 train --once)")
    for column in ("round", "collected 1st / 2nd", "trained", "steps", "reward", "skipped groups",
                   "gate 2nd: cand. / active", "gate +/−", "gate p", "decision", "s"):
        rounds.add_column(column)
    for r in result["rounds"]:
        report = (r["training_round"] or {}).get("report") or {}
        training, gate = report.get("training") or {}, report.get("gate") or {}
        rewards = training.get("reward_mean") or []
        rounds.add_row(
            str(r["round"]), f"{r['collected']['first']} / {r['collected']['second']} of {r['collected']['tasks']}",
            str(training.get("failures", report.get("train", "—"))), str(training.get("steps", "—")),
            f"{sum(rewards) / len(rewards):.2f}" if rewards else "—",
            f"{training.get('skipped_groups', '—')}/{training.get('groups', '—')}",
            (f"{gate['candidate_second_attempt']:.2f} / {gate['active_second_attempt']:.2f} (n={gate['heldout']})"
             if gate else "—"),
            f"+{gate.get('candidate_only_passed', '—')} / −{gate.get('active_only_passed', '—')}" if gate else "—",
            f"{gate['p_value']:.3g}" if gate else "—",
            "promoted" if r["promoted"] else (report.get("reason") or report.get("skipped") or "—"),
            f"{r['seconds']['total']:.0f}")
    console.print(rounds)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label, colour, shift in (("first_attempt", "first attempt", "tab:blue", -0.07),
                                      ("second_attempt", "second attempt (one reflect-retry)", "tab:orange", 0.07)):
        xs = [p["round"] + shift for p in result["curve"]]
        ys = [p[key]["rate"] for p in result["curve"]]
        low = [p[key]["rate"] - p[key]["ci95"][0] for p in result["curve"]]
        high = [p[key]["ci95"][1] - p[key]["rate"] for p in result["curve"]]
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=4, color=colour, label=f"active version: {label}")
        rejected = [c for c in result["candidates"] if c["candidate"] != result["curve"][c["round"]]["active"]]
        if rejected:
            ax.errorbar([c["round"] + 3 * shift for c in rejected], [c[key]["rate"] for c in rejected],
                        yerr=[[c[key]["rate"] - c[key]["ci95"][0] for c in rejected],
                              [c[key]["ci95"][1] - c[key]["rate"] for c in rejected]],
                        marker="x", linestyle="none", capsize=3, color=colour, alpha=0.6,
                        label=f"rejected candidate (pinned): {label}")
    rejected_in = {c["round"]: c["candidate"] for c in result["candidates"]
                   if c["candidate"] != result["curve"][c["round"]]["active"]}
    ax.set_xticks([p["round"] for p in result["curve"]],
                  [f"{p['round']}\n{p['active']}"
                   + (f"\n({rejected_in[p['round']]} rejected)" if p["round"] in rejected_in else "")
                   for p in result["curve"]])
    ax.set_xlabel("after training round (active version)")
    ax.set_ylabel(f"held-out success (n = {result['suite']['heldout']})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"R3 on SmolLM2-135M-Instruct (CPU): held-out {'+'.join(result['suite']['families'])}, "
                 "95% Wilson CIs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(result: dict[str, Any], out_dir: Path = RESULTS, name: str = "learn") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{name}.json", out_dir / f"{name}.png"
    json_path.write_text(json.dumps(result, indent=2, default=str))
    draw = plot_scenarios if "scenarios" in result else plot_planted if name.startswith("learn_planted") else plot
    draw(result, png_path)
    return json_path, png_path


def main(config: Config, out_dir: Path = RESULTS) -> dict[str, Any]:
    """Runs the experiment of `config`'s suite (`families == ("planted",)`: the planted one)."""
    require_bench_extra()
    # On SIGTERM unwind like Ctrl-C, so the server and trainer processes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if config.families == PLANTED.families and config.scenarios > 1:
        result = asyncio.run(scenarios_experiment(config))
        json_path, png_path = save(result, out_dir, "learn_planted_scenarios")
        print_scenarios(result)
    elif config.families == PLANTED.families:
        result = asyncio.run(planted_experiment(config))
        json_path, png_path = save(result, out_dir, "learn_planted" + ("_graded" if config.reward == "graded" else "")
                                   + ("_canary" if config.canary_fraction > 0 else ""))
        print_planted(result)
    else:
        result = asyncio.run(experiment(config))
        json_path, png_path = save(result, out_dir)
        print_table(result)
    log(f"wrote {json_path} and {png_path}; total {result['timings_s']['total_s'] / 60:.1f} min")
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["tasks", "planted"], default="tasks",
                        help="tasks: the families below; planted: bench/planted.py with PLANTED's defaults")
    for name, default in asdict(Config()).items():
        if isinstance(default, bool):
            parser.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=None)
        elif name != "families":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=None,
                                choices=planted.REWARDS if name == "reward" else (1, 2) if name == "scenarios" else None)
    parser.add_argument("--families", default=None, help=", ".join(suite.FAMILIES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    arguments = vars(parser.parse_args())
    out, chosen = arguments.pop("out"), PLANTED if arguments.pop("suite") == "planted" else Config()
    if arguments["families"] is not None:
        arguments["families"] = tuple(arguments["families"].split(","))
    main(replace(chosen, **{k: v for k, v in arguments.items() if v is not None}), out)
