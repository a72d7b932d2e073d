"""`r3 train`'s worker: a real round on the CPU, from recorded failures to a gated, registered version."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from sqlalchemy import select
from support import ThreadedServer

from r3.engines.base import SamplingParams
from r3.engines.transformers_engine import TransformersEngine
from r3.episodes import AttemptRecord, Episode, new_episode_id
from r3.settings import Settings
from r3.store.models import EpisodeRow, TrainingRound, VersionStatus
from r3.store.registry import adapter_sha256
from r3.store.rounds import HELD_OUT
from r3.store.store import open_store
from trainer.worker import TrainerWorker, grpo_settings

WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "pearl"]


def episode(word: str, passed: bool) -> Episode:
    """A request to say a word, judged by a regex; the recorded first attempt passed or failed."""
    attempt = AttemptRecord(number=1, completion_id=f"chatcmpl-{new_episode_id()}", finish_reason="stop",
                            prompt_tokens=20, completion_tokens=3, latency_s=0.1,
                            content=word if passed else "I cannot.", success=passed,
                            detail="" if passed else "the answer must contain the word")
    return Episode(id=new_episode_id(), tenant=None, model="m", adapter=None, task_kind="generic",
                   verifier={"type": "regex", "pattern": word, "mode": "search", "flags": ["IGNORECASE"]},
                   store_text=True, messages=[{"role": "user", "content": f"Say the word {word}."}], tools=None,
                   tool_choice=None, sampling={"max_tokens": 6, "temperature": 0.0, "top_p": 1.0, "seed": None,
                                               "stop": [], "top_logprobs": 0},
                   attempts=[attempt])


class AlternatingWebhook:
    """A webhook verifier whose verdicts on each episode alternate in the order they arrive: pass,
    fail, pass, ... A GRPO group's G = 2 retries of one failure (judged concurrently, in either
    order) so always get one of each, and every group carries signal whatever the model reflects.
    (A regex on the retry rarely does: the retries after both reflections usually pass or fail alike,
    and a round without signal registers nothing.)"""

    def __init__(self) -> None:
        self.judged: Counter[str] = Counter()  # verdicts given, per episode id
        self.app = FastAPI()

        @self.app.post("/judge")
        async def judge(request: Request) -> dict:
            episode_id = (await request.json())["episode_id"]
            self.judged[episode_id] += 1  # one event loop: no other call counts in between
            passed = self.judged[episode_id] % 2 == 1
            return {"success": passed, "detail": "" if passed else "the answer must contain the word"}


@pytest.fixture
def webhook():
    hook = AlternatingWebhook()
    with ThreadedServer(hook.app) as url:
        hook.url = f"{url}/judge"
        yield hook


def judged_by(hook: AlternatingWebhook, word: str) -> Episode:
    """A failure to say `word` whose verifier is `hook`."""
    failed = episode(word, passed=False)
    failed.verifier = {"type": "webhook", "url": hook.url}
    return failed


@pytest.fixture
async def worker(model_path: Path, tmp_path: Path, webhook: AlternatingWebhook):
    # A generous webhook timeout: a verdict lost to a busy machine would break the alternation.
    settings = Settings(models_dir=model_path.parent, data_dir=tmp_path, train_num_generations=2, train_max_steps=1,
                        reflection_max_tokens=8, train_heldout_fraction=0.5, gate_regression_size=2, gate_samples=2,
                        webhook_allow_loopback=True, webhook_timeout_s=60)
    async with open_store(settings) as store:  # the embedded SQLite migrates itself
        await store.episodes.write([judged_by(webhook, word) for word in WORDS]
                                   + [episode("hello", True), episode("yes", True)])
        worker = TrainerWorker(settings, store)
        yield worker
        await worker.close()


async def test_the_log_says_how_far_each_scenario_is_from_a_round(worker, caplog) -> None:
    """A trainer waiting for failures says so once each time the count changes, not at every poll."""
    caplog.set_level(logging.INFO, logger="trainer.worker")
    assert await worker._due() is None and await worker._due() is None  # 8 failures, 16 needed
    await worker.store.episodes.write([episode("again", passed=False)])
    assert await worker._due() is None
    said = [r.getMessage() for r in caplog.records if "new failures a round needs" in r.getMessage()]
    assert said == ["scenario default: 8 of the 16 new failures a round needs",
                    "scenario default: 9 of the 16 new failures a round needs"]


async def test_a_round_trains_registers_gates_and_records(worker, model_path: Path) -> None:
    outcome = await worker.run_round(requested_by="test")
    assert outcome.candidate == "r3-v1"
    version = await worker.registry.get("r3-v1")
    assert version.status == (VersionStatus.ACTIVE if outcome.promoted else VersionStatus.REJECTED)
    assert version.sha256 == adapter_sha256(version.path) and version.parent is None
    gate = version.metrics["gate"]
    assert gate and version.metrics["training"]["steps"] == 1 and version.metrics["reason"]
    assert version.metrics["training"]["groups"] > 0 and version.metrics["training"]["skipped_groups"] == 0
    # Whichever way it went, the decision is the one its own numbers call for.
    assert gate["heldout"] > 0 and gate["samples"] == 2 and gate["temperature"] == 1.0
    assert outcome.promoted == (gate["p_value"] < gate["alpha"] and gate["first_attempt_drop"] <= gate["tolerance"])

    async with worker.store.database.sessions() as session:
        round_row = await session.scalar(select(TrainingRound))
        trained = dict((await session.execute(select(EpisodeRow.id, EpisodeRow.trained_in))).all())
    assert (round_row.status, round_row.candidate, round_row.promoted) == ("finished", "r3-v1", outcome.promoted)
    assert round_row.report["gate"] == gate
    assert set(version.episodes_used) == {i for i, used in trained.items() if used == "r3-v1"}
    assert version.episodes_used and any(used == HELD_OUT for used in trained.values())

    # The registered files are a real adapter the serving engine loads and generates with (that a
    # trained adapter changes the output is test_grpo's concern).
    engine = TransformersEngine(str(model_path), "m")
    try:
        await engine.load_adapter(version.name, version.path)
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Say the word apple."}],
                                                      add_generation_prompt=True, tokenize=False)
        params = SamplingParams(max_tokens=4, temperature=0)
        assert (await engine.generate(prompt, params, version.name)).completion_tokens > 0
        assert version.name in engine.adapters()
    finally:
        await engine.close()

    # Nothing new to learn from: the next round has no training set and registers nothing.
    again = await worker.run_round(requested_by="test")
    assert again.candidate is None and len(await worker.registry.versions()) == 1


def test_a_round_takes_device_dtype_and_vllm_generation_from_the_settings() -> None:
    settings = Settings(_env_file=None, device="cpu", dtype="bfloat16", train_num_generations=6, train_use_vllm=True,
                        train_vllm_mode="server", train_vllm_server_url="http://trl-vllm:8000")
    grpo = grpo_settings(settings)
    assert (grpo.device, grpo.dtype, grpo.num_generations) == ("cpu", "bfloat16", 6)
    assert (grpo.use_vllm, grpo.vllm_mode, grpo.vllm_server_url) == (True, "server", "http://trl-vllm:8000")


async def test_the_gate_runs_on_the_engine_factorys_engine_without_the_servers_adapters(
        worker, lora_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Settings] = []

    async def create_engine(settings: Settings):
        made.append(settings)
        raise RuntimeError("no engine in this test")

    monkeypatch.setattr("trainer.worker.create_engine", create_engine)
    worker.settings = worker.settings.model_copy(update={"engine": "vllm", "device": "cpu", "dtype": "bfloat16",
                                                         "lora_modules": {"static": lora_path}})
    with pytest.raises(RuntimeError, match="no engine"):
        await worker._gate("r3-v1", lora_path, None, [], [], worker.settings)
    (gate,) = made
    assert (gate.engine, gate.device, gate.dtype, gate.lora_modules) == ("vllm", "cpu", "bfloat16", {})


def test_every_grpo_knob_is_an_r3_train_setting() -> None:
    settings = Settings(_env_file=None, train_prompts_per_step=4, train_gradient_accumulation_steps=2,
                        train_lora_rank=8, train_lora_alpha=16, train_lora_target_modules=["q_proj", "v_proj"],
                        train_beta=0.0, train_epsilon=0.3, train_temperature=0.8, train_retry_temperature=0.5,
                        train_max_retry_tokens=64, train_max_prompt_tokens=512, train_num_epochs=2.0,
                        train_lr_scheduler="constant", train_warmup_ratio=0.03, train_seed=7,
                        train_shuffle_rewards=True, reflection_max_tokens=48, train_gradient_checkpointing=False)
    grpo = grpo_settings(settings)
    assert (grpo.prompts_per_step, grpo.gradient_accumulation_steps, grpo.lora_rank, grpo.lora_alpha) == (4, 2, 8, 16)
    assert grpo.lora_target_modules == ("q_proj", "v_proj") and (grpo.beta, grpo.epsilon) == (0.0, 0.3)
    assert (grpo.temperature, grpo.retry_temperature, grpo.max_retry_tokens, grpo.max_prompt_tokens) == (0.8, 0.5, 64, 512)
    assert (grpo.num_epochs, grpo.lr_scheduler_type, grpo.warmup_ratio, grpo.seed) == (2.0, "constant", 0.03, 7)
    assert grpo.shuffle_rewards and grpo.max_reflection_tokens == 48 and not grpo.gradient_checkpointing


# ---------------------------------------------------------------------------------------------- rounds that stop early


def unpassable(word: str) -> Episode:
    """A failure no reflection can rescue: the verifier wants text the model will not write in 6 tokens."""
    failed = episode(word, passed=False)
    failed.verifier = {"type": "regex", "pattern": "^QZXJV-8841-KWPL$", "mode": "fullmatch"}
    return failed


@asynccontextmanager
async def isolated_worker(model_path: Path, tmp_path: Path, episodes: list[Episode],
                          **settings) -> AsyncIterator[TrainerWorker]:
    config = Settings(_env_file=None, models_dir=model_path.parent, data_dir=tmp_path, train_num_generations=2,
                      train_max_steps=1, reflection_max_tokens=8, gate_regression_size=4, **settings)
    async with open_store(config) as store:
        await store.episodes.write(episodes)
        worker = TrainerWorker(config, store)
        try:
            yield worker
        finally:
            await worker.close()


async def test_too_few_held_out_names_the_number_that_is_short_and_what_to_do(model_path: Path, tmp_path: Path) -> None:
    from trainer.data import failures_from_episodes, split

    # Three failures whose prompts all fall on the training side at the default held-out fraction (0.2).
    candidates = [episode(word, passed=False) for word in WORDS]
    train, _ = split(failures_from_episodes(candidates), 0.2)
    kept = {f.episode_id for f in train[:3]}
    async with isolated_worker(model_path, tmp_path, [e for e in candidates if e.id in kept]) as worker:
        outcome = await worker.run_round(requested_by="cli")
    skipped = outcome.report["skipped"]
    assert outcome.candidate is None and outcome.report["train"] == 3 and outcome.report["heldout"] == 0
    assert "none of the 3 distinct failed prompts is held out for the gate" in skipped
    assert "R3_TRAIN_HELDOUT_FRACTION=0.2" in skipped and "to train on" not in skipped  # only what is short


async def test_an_episode_with_an_invalid_stored_verifier_is_set_aside_and_the_round_goes_on(
        model_path: Path, tmp_path: Path) -> None:
    broken = episode("hello", passed=True)  # another tenant's, in the gate's regression set
    broken.tenant = "tenant-b"
    broken.verifier = {"type": "math", "expected": "1", "tolerance": None}  # a NaN stored as null
    broken_failure = episode("maple", passed=False)
    broken_failure.verifier = {"type": "countdown", "numbers": [3, None], "target": 24}
    async with isolated_worker(model_path, tmp_path, [broken, broken_failure, episode("apple", passed=False)],
                               train_heldout_fraction=0.5) as worker:
        first = await worker.run_round(requested_by="cli")
        aside = {e.episode_id: e for e in await worker.rounds.set_aside_episodes(10)}
        second = await worker.run_round(requested_by="cli")
        assert len(await worker.rounds.set_aside_episodes(10)) == 2  # not picked, nor set aside, again
        rounds = await worker.rounds.recent(5)
    assert set(aside) == {broken.id, broken_failure.id}
    assert aside[broken.id].tenant == "tenant-b" and aside[broken.id].round_id == first.round_id
    assert "math.tolerance" in aside[broken.id].reason
    assert first.report["set_aside"] == 2 and first.report["regression"] == 0 and second.report["set_aside"] == 0
    assert {r.status for r in rounds} == {"finished"}  # went on with the rest (too few here), never failed


async def test_a_round_whose_rollouts_carry_no_signal_stops_before_a_candidate(model_path: Path, tmp_path: Path,
                                                                                all_cores) -> None:
    async with isolated_worker(model_path, tmp_path, [unpassable(word) for word in WORDS],
                               train_heldout_fraction=0.5) as worker:
        outcome = await worker.run_round(requested_by="cli")
        untrained = await worker.rounds.count_untrained_failures()
        versions = await worker.registry.versions()
    assert outcome.candidate is None and not outcome.promoted and versions == []  # nothing registered or gated
    assert outcome.report["skipped"].startswith("no signal: in all ") and "every retry failed" in outcome.report["skipped"]
    training = outcome.report["training"]
    assert training["steps"] == 1 and training["skipped_groups"] == training["groups"] and "gate" not in outcome.report
    assert untrained == 0  # its failures are not picked again


def test_a_round_on_the_cpu_is_sized_for_minutes_where_the_settings_say_nothing() -> None:
    from trainer.worker import CPU_ROUND, sized_for_device

    sized = sized_for_device(Settings(_env_file=None, device="cpu"))
    assert {name: getattr(sized, name) for name in CPU_ROUND} == CPU_ROUND
    chosen = sized_for_device(Settings(_env_file=None, device="cpu", train_max_steps=50, gate_samples=8))
    assert (chosen.train_max_steps, chosen.gate_samples) == (50, 8)  # what a user sets stands
    assert chosen.train_max_failures == CPU_ROUND["train_max_failures"]


async def test_a_bad_probe_file_stops_the_trainer_naming_the_setting(tmp_path: Path) -> None:
    from r3.settings import ConfigurationError
    from r3.store.store import open_store
    from trainer.worker import TrainerWorker

    probe = tmp_path / "probe.jsonl"
    probe.write_text('{"question": "2 + 2?", "choices": ["4", "5"], "answer": 0}\n{"question": "no choices"}\n')
    settings = Settings(data_dir=tmp_path, database_url=None, redis_url=None, gate_probe_file=probe)
    async with open_store(settings) as store:
        with pytest.raises(ConfigurationError, match="R3_GATE_PROBE_FILE: .*line 2"):
            TrainerWorker(settings, store)
