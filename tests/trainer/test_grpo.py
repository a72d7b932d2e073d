"""GRPO with reflection-only credit: prompts, rewards, advantages, the loss mask, a real round.

Most tests run TRL's real `GRPOTrainer` on a tiny random Llama (with the bundled tokenizer and chat
template) and a scripted policy: reflection k of a group reads "Note k." and the retry after it is
chosen by the test, so the rewards are known. Verifiers, rollout, advantages, loss and optimizer
are the real ones. The last test trains the bundled model for real.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model, load_peft_weights
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback

from r3.engines.base import GenerationChunk, SamplingParams, TokenLogprob
from r3.engines.device import Placement
from r3.engines.transformers_engine import TransformersEngine
from r3.reflect_retry import ChatTask, Reflector, ReflectRetry
from trainer.data import Failure, failures_from_episodes
from trainer.grpo import (
    GRPOSettings,
    PolicySampler,
    ReflectionRollout,
    build_trainer,
    carries_signal,
    grpo_config,
    precision_args,
    reflection_prompt,
    retry_of,
    train_round,
)
from verifiers import VerifierRuntime, parse_spec

SAMPLING = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "seed": None, "stop": [], "top_logprobs": 0}
FRANCE = "What is the capital of France?"
SUM = "What is 2 + 2?"
TINY = GRPOSettings(num_generations=4, prompts_per_step=2, max_reflection_tokens=8, max_retry_tokens=8,
                    learning_rate=1e-2, max_steps=1)


def failure(question: str, attempt: str, verifier: dict, tools=None, tool_choice=None, stop=()) -> Failure:
    return Failure(episode_id=f"ep_{abs(hash(question))}", messages=[{"role": "user", "content": question}],
                   tools=tools, tool_choice=tool_choice, failed_attempt={"role": "assistant", "content": attempt},
                   detail="the answer is not the expected answer", verifier=verifier, task_kind="generic",
                   sampling={**SAMPLING, "stop": list(stop)})


FAILURES = [failure(FRANCE, "London", {"type": "exact", "expected": "Paris"}),
            failure(SUM, "5", {"type": "exact", "expected": "4"})]


class ScriptedPolicy:
    """Stands in for the model's sampling: reflection k of a group is "Note k."; the retry written
    after "Note k." is `retry(question, k, rollout)`, rollout counting the reflection batches from 1."""

    def __init__(self, tokenizer, retry: Callable[[str, int, int], str]) -> None:
        self.tokenizer, self.retry, self.rollouts = tokenizer, retry, 0

    def __call__(self, trainer, prompt_ids, max_new_tokens, temperature, group_size, grammars=(), keep_cache=False):
        texts = self.tokenizer.batch_decode(prompt_ids)
        if "Now try the task again" not in texts[0]:
            self.rollouts += 1
        outputs = []
        for row, text in enumerate(texts):
            if "Now try the task again" in text:
                question = next(q for q in (FRANCE, SUM) if q in text)
                note = int(re.findall(r"Note (\d)\.", text)[-1])
                outputs.append(self.retry(question, note, self.rollouts))
            else:
                outputs.append(f"Note {row % group_size}.")
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in outputs], None


def half_right_on_france(question: str, note: int, rollout: int) -> str:
    """France: notes 0 and 2 lead to the right retry; the sum: every retry fails."""
    if question == FRANCE:
        return "Paris" if note in (0, 2) else "London"
    return "5"


@pytest.fixture(scope="module")
def tiny_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama with the bundled model's tokenizer and chat template."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter with random, non-zero weights: an active adapter to start a round from."""
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("tiny-adapter")
    get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model), config).save_pretrained(path)
    return path


def tiny_trainer(tiny_model: str, tmp_path: Path, retry=half_right_on_france, settings: GRPOSettings = TINY,
                 start_adapter: Path | None = None):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    return build_trainer(tiny_model, start_adapter, FAILURES, tmp_path, settings, VerifierRuntime(),
                         ScriptedPolicy(tokenizer, retry))


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


# ---------------------------------------------------------------------------------------------
# Prompts and rewards
# ---------------------------------------------------------------------------------------------


class RecordingEngine:
    """An engine that answers from a script and keeps every prompt and sampling it is sent (the part
    of `Engine` that `Reflector` uses)."""

    def __init__(self, tokenizer, supports_json_schema: bool, answers: list[str]) -> None:
        self.tokenizer, self.supports_json_schema, self.answers = tokenizer, supports_json_schema, answers
        self.sent: list[tuple[str, SamplingParams]] = []

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def end_conversation(self, conversation: str) -> None:
        """Nothing held: it caches nothing."""

    async def stream(self, prompt: str, params: SamplingParams, adapter=None, conversation=None):
        self.sent.append((prompt, params))
        text = self.answers.pop(0)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        yield GenerationChunk(text, [TokenLogprob(i, "", 0.0) for i in ids], "stop", prompt_length=len(self.encode(prompt)))


class RecordingPolicy:
    """The trainer's sampler, scripted: every reflection is `reflection`, every retry `retry`; keeps the
    prompt ids and grammars it is given."""

    def __init__(self, tokenizer, reflection: str, retry: str) -> None:
        self.tokenizer, self.reflection, self.retry = tokenizer, reflection, retry
        self.calls: list[tuple[list[list[int]], list]] = []

    def __call__(self, trainer, prompt_ids, max_new_tokens, temperature, group_size, grammars=(), keep_cache=False):
        self.calls.append((prompt_ids, list(grammars)))
        text = self.retry if len(self.calls) == 2 else self.reflection
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"]] * len(prompt_ids), None


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
PREFILLED = '<tool_call>\n{"name": "'  # what a prefilled engine is given of a forced call
# case -> (the request, the failed first attempt, the retry that passes), as the model writes them
# with a grammar-held tool_choice; with a prefilled one, the engine writes them less the prefix.
SKEW_CASES = {
    "plain answer": (ChatTask(model="m", adapter=None, messages=[{"role": "user", "content": FRANCE}], tools=None,
                              tool_choice=None, params=SamplingParams(max_tokens=16, stop=("\n",)),
                              verifier=parse_spec({"type": "exact", "expected": "Paris"})),
                     "London", "Paris\nand more"),
    "forced tool call": (ChatTask(model="m", adapter=None, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                  tools=[WEATHER], tool_choice="required", params=SamplingParams(max_tokens=48),
                                  verifier=parse_spec({"type": "tool_call", "expected": [
                                      {"name": "get_weather", "arguments": {"city": "Paris"}}]})),
                         CALL.replace("Paris", "Lyon"), CALL),
}


@pytest.mark.parametrize("constrained", [False, True], ids=["prefilled", "grammar-held"])
@pytest.mark.parametrize("case", SKEW_CASES)
async def test_the_trainer_tokenizes_exactly_what_the_server_sent(model_path, case, constrained):
    """No train/serve skew: for an episode the server recorded, the reflection prompt and the retry
    prompt the GRPO rollout trains on are the ones the server sent, byte for byte and token for
    token; the retry is held to the same grammar, read (stop strings, tool calls) and judged the same
    way; in both rendering modes of `tool_choice`."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    task, wrong, right = SKEW_CASES[case]
    if not constrained and task.tools:
        wrong, right = wrong.removeprefix(PREFILLED), right.removeprefix(PREFILLED)
    reflection = "I should check the city."
    engine = RecordingEngine(tokenizer, constrained, [wrong, reflection, right.split("\n")[0] if task.params.stop else right])
    run = await Reflector(engine, VerifierRuntime()).run(Reflector.start(task, None))
    assert [a.success for a in run.episode.attempts] == [False, True]
    [recorded] = failures_from_episodes([run.episode])

    policy = RecordingPolicy(tokenizer, reflection, right)  # the trainer's sampler does not stop at stop strings
    settings = replace(TINY, num_generations=2, constrained_decoding=constrained)
    rollout = ReflectionRollout([recorded], tokenizer, settings, VerifierRuntime(), policy)
    trainer = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(vocab_size=len(tokenizer))))
    out = await asyncio.to_thread(rollout, list(rollout.failures) * 2, trainer)  # TRL calls it off the event loop

    (served_reflection, _), (served_retry, retry_params) = engine.sent[1], engine.sent[2]
    (reflection_ids, _), (retry_ids, grammars) = policy.calls
    assert list(rollout.failures) == [served_reflection]
    assert reflection_ids == [tokenizer(served_reflection, add_special_tokens=False)["input_ids"]] * 2
    assert retry_ids == [tokenizer(served_retry, add_special_tokens=False)["input_ids"]] * 2
    assert tokenizer.decode(retry_ids[0]) == served_retry
    assert (retry_params.structural_tag is not None) == (constrained and bool(task.tools))
    assert [grammar is not None for grammar in grammars] == [retry_params.structural_tag is not None] * 2
    assert out["retry_reward"] == [1.0, 1.0]  # the server passed this retry, and so does the trainer


def test_a_retry_the_server_holds_to_a_grammar_is_held_to_it_in_training_too(model_path, tmp_path):
    """The trainer's own sampler (transformers' generate) holds a forced call to the offered tool and its
    schema, and ends it there, as the serving engines do (the bundled model, greedy, as retries are)."""
    trainer, rollout, _ = build_trainer(str(model_path), None, FAILURES, tmp_path, TINY, VerifierRuntime())
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Paris", "Lyon"]}}, "required": ["city"],
        "additionalProperties": False}}}]
    forced = replace(failure("Weather in Paris?", "It is sunny.", {"type": "tool_schema"}, tools, "required"),
                     sampling={**SAMPLING, "parallel_tool_calls": False})  # as the request asked, recorded
    task, _, prompt = retry_of(rollout.protocol, forced, "I must call the tool.", temperature=0.0)
    grammar = rollout.grammar(trainer, task)
    assert grammar is not None and prompt.assistant_prefix == ""  # held by the grammar, not prefilled
    [ids], _ = PolicySampler()(trainer, [rollout.encode(prompt.engine_input)], 64, 0.0, 1, [grammar])
    answer = rollout.protocol.answer(task, prompt, rollout.tokenizer.decode(ids, skip_special_tokens=True))
    assert ids[-1] in trainer.eos_token_ids, "the grammar ends the answer when the call is complete"
    [call] = answer.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments)["city"] in ("Paris", "Lyon")


def test_the_sampler_computes_nothing_twice_and_generates_what_a_fresh_batch_does(model_path, tmp_path):
    """A group's rows compute their shared prompt once, and the retries continue the reflections' KV
    cache: a retry computes only what follows its reflection prompt (a row continuing another row's
    conversation reuses less). Either way the sampler generates the tokens that rows computed apart
    and from scratch generate (the bundled model, greedy)."""
    trainer, rollout, _ = build_trainer(str(model_path), None, FAILURES, tmp_path, TINY, VerifierRuntime())
    prompts = [rollout.encode(prompt) for prompt in rollout.failures for _ in range(2)]  # 2 failures, G = 2
    assert PolicySampler()(trainer, prompts, 8, 0.0, 2) == PolicySampler()(trainer, prompts, 8, 0.0, 1)

    torch.manual_seed(0)
    sampler = PolicySampler()
    reflections, _ = sampler(trainer, prompts, 12, 1.0, 2, (), True)
    texts = rollout.tokenizer.batch_decode(reflections, skip_special_tokens=True)
    failures = [failure for failure in rollout.failures.values() for _ in range(2)]
    retries = [rollout.encode(retry_of(rollout.protocol, failure, text, 0.0)[2].engine_input)
               for failure, text in zip(failures, texts)]
    retries[0] = retries[2]  # the other failure's conversation

    kept, step, pad_token_id = sampler.kept, trainer.state.global_step, rollout.tokenizer.pad_token_id
    assert kept.continuation(retries, step + 1, pad_token_id) is None  # another step's weights computed it
    _, attention_mask, _ = kept.continuation(retries, step, pad_token_id)
    reused = attention_mask[:, :kept.cache.get_seq_length()].sum(dim=1).tolist()
    # The others reuse their reflection prompt and their reflection (as far as it was fed back).
    assert reused[0] < len(prompts[0]) and all(reused[row] > len(prompts[row]) for row in (1, 2, 3))
    continued, _ = sampler(trainer, retries, 8, 0.0, 1)
    fresh, _ = PolicySampler()(trainer, retries, 8, 0.0, 1)
    assert continued == fresh
    assert sampler.kept is None  # freed by the call that followed


def test_rollout_takes_one_failure_per_prompt_within_the_length_limit(model_path):
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    long = failure("Why? " * 400, "Because.", {"type": "exact", "expected": "x"})
    again = replace(FAILURES[0], episode_id="ep_again")  # the same reflection prompt, recorded twice
    rollout = ReflectionRollout([*FAILURES, again, long], tokenizer, replace(TINY, max_prompt_tokens=512),
                                VerifierRuntime())
    assert [f.episode_id for f in rollout.failures.values()] == [f.episode_id for f in FAILURES]
    assert list(rollout.failures) == [reflection_prompt(rollout.protocol, f).engine_input for f in FAILURES]


def test_carries_signal():
    assert carries_signal([1.0, 0.0, 0.0, 0.0])
    assert not carries_signal([0.0] * 4) and not carries_signal([1.0] * 4)


def test_rollout_rewards_advantages_and_skipped_groups(tiny_model, tmp_path):
    trainer, rollout, _ = tiny_trainer(tiny_model, tmp_path)
    trainer.model.train()
    france, total = list(rollout.failures)  # the reflection prompts, in the order of FAILURES
    rows = [{"prompt": prompt} for prompt in [france] * 4 + [total] * 4]  # as TRL's sampler hands them out
    inputs = trainer._generate_and_score_completions(rows)

    batch = rollout.batches[-1]
    assert batch.rewards == [1.0, 0.0, 1.0, 0.0] + [0.0] * 4
    assert batch.skipped_groups == 1 and len(batch.groups) == 2
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std().item()  # TRL: (r - group mean) / (group std + 1e-4)
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 2 + [0.0] * 4
    assert inputs["advantages"].tolist() == pytest.approx(expected, rel=1e-5)
    # The completions are the reflections; the skipped group's tokens are masked out of the loss.
    completions = rollout.tokenizer.batch_decode(inputs["completion_ids"], skip_special_tokens=True)
    assert completions == ["Note 0.", "Note 1.", "Note 2.", "Note 3."] * 2
    trained = (inputs["completion_mask"] * inputs["tool_mask"]).sum(dim=1)
    assert (trained[:4] > 0).all() and (trained[4:] == 0).all()


def test_the_control_shuffles_rewards_within_each_group_only(tiny_model, tmp_path):
    """R3_TRAIN_SHUFFLE_REWARDS: each group keeps its rewards (so its signal and mean), but which
    reflection earned which is lost; over a few rollouts some reward lands on another reflection."""
    settings = replace(TINY, shuffle_rewards=True)
    trainer, rollout, _ = tiny_trainer(tiny_model, tmp_path, settings=settings)
    france, total = list(rollout.failures)
    for _ in range(4):
        trainer._generate_and_score_completions([{"prompt": p} for p in [france] * 4 + [total] * 4])
    for batch in rollout.batches:
        assert sorted(batch.rewards[:4]) == [0.0, 0.0, 1.0, 1.0] and batch.rewards[4:] == [0.0] * 4
        assert batch.skipped_groups == 1
    assert any(batch.rewards[:4] != [1.0, 0.0, 1.0, 0.0] for batch in rollout.batches)  # notes 0 and 2 earned them


# ---------------------------------------------------------------------------------------------
# The loss trains the reflection and nothing else
# ---------------------------------------------------------------------------------------------


class Capture:
    """The training forward pass's inputs, and the gradient reaching each position's final hidden
    state: position t's final state predicts token t + 1 and nothing else, so a zero gradient there
    means the loss puts no weight on token t + 1."""

    def __init__(self, model) -> None:
        self.inputs, self.hidden = [], []
        model.register_forward_hook(self._inputs, with_kwargs=True)
        model.get_base_model().model.norm.register_forward_hook(self._hidden)

    def _inputs(self, module, args, kwargs, output):
        if torch.is_grad_enabled():
            self.inputs.append(kwargs)

    def _hidden(self, module, args, output):
        if output.requires_grad:
            output.retain_grad()
            self.hidden.append(output)


def test_loss_trains_only_the_reflection_tokens(tiny_model, tiny_adapter, tmp_path):
    # From an active adapter, so the policy differs from the KL reference (the base model) and the
    # KL term alone would give every unmasked token a gradient.
    trainer, rollout, _ = tiny_trainer(tiny_model, tmp_path, start_adapter=tiny_adapter)
    saved = load_peft_weights(str(tiny_adapter))
    loaded = {name.replace(".default", ""): weight for name, weight in lora_weights(trainer.model).items()}
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[name], saved[name]) for name in saved)
    capture = Capture(trainer.model)
    trainer.train()  # one step: both failures, 4 reflections each

    (inputs,), (hidden,) = capture.inputs, capture.hidden
    tokenizer = rollout.tokenizer
    # TRL labels the completion tokens (the reflections); everything before them is the prompt.
    completion = inputs["labels"] != -100
    credit = hidden.grad.norm(dim=-1)  # (batch, positions)
    for row in range(inputs["input_ids"].shape[0]):
        ids = inputs["input_ids"][row]
        prompt_end = int(completion[row].nonzero()[0])
        prompt, reflection = tokenizer.decode(ids[:prompt_end]), tokenizer.decode(ids[completion[row]])
        # The failed attempt is in the prompt; the retry is nowhere in what is trained on.
        assert "London" in prompt or "5" in prompt
        assert re.fullmatch(r"Note \d\.<\|im_end\|>", reflection)
        assert "Now try the task again" not in tokenizer.decode(ids) and "Paris" not in tokenizer.decode(ids)
        predicts = credit[row, :-1]  # position t predicts token t + 1
        assert torch.all(predicts[: prompt_end - 1] == 0), "the prompt (and the attempt in it) gets no credit"
        predicts_reflection = predicts[completion[row][1:]]
        if FRANCE in prompt:  # rewards 1, 0, 1, 0: trained
            assert torch.all(predicts_reflection > 0)
        else:  # every retry failed: the group is skipped, KL term included
            assert torch.all(predicts_reflection == 0)


def test_step_without_signal_leaves_the_adapter_alone(tiny_model, tmp_path):
    def signal_in_first_step_only(question: str, note: int, rollout: int) -> str:
        return half_right_on_france(question, note, rollout) if rollout == 1 else "London"

    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots.append(lora_weights(model))

    settings = replace(TINY, max_steps=2)
    trainer, _, monitor = tiny_trainer(tiny_model, tmp_path, signal_in_first_step_only, settings)
    initial = lora_weights(trainer.model)
    trainer.add_callback(Snapshot())
    trainer.train()

    assert [step.updated for step in monitor.steps] == [True, False]
    assert [step.skipped_groups for step in monitor.steps] == [1, 2]
    assert monitor.steps[0].kl is not None and monitor.steps[1].kl is None  # nothing trained, no KL measured
    after_first, after_second = snapshots
    assert any(not torch.equal(initial[name], after_first[name]) for name in initial)
    assert all(torch.equal(after_first[name], after_second[name]) for name in initial)


# ---------------------------------------------------------------------------------------------
# Device, precision and TRL's vLLM generation
# ---------------------------------------------------------------------------------------------


def test_the_round_loads_and_computes_in_the_placements_dtype():
    cpu = precision_args(Placement("cpu", "float32"))
    assert cpu == {"use_cpu": True, "bf16": False, "fp16": False, "model_init_kwargs": {"dtype": "float32"}}
    gpu = precision_args(Placement("cuda", "bfloat16"))  # not float32 weights, as TRL loads them unless told
    assert gpu == {"use_cpu": False, "bf16": True, "fp16": False, "model_init_kwargs": {"dtype": "bfloat16"}}
    assert precision_args(Placement("cuda", "float16"))["fp16"]


def test_gradient_checkpointing_is_on_unless_the_settings_turn_it_off(tmp_path):
    cpu = Placement("cpu", "float32")
    assert grpo_config(TINY, tmp_path, 2, cpu).gradient_checkpointing
    assert not grpo_config(replace(TINY, gradient_checkpointing=False), tmp_path, 2, cpu).gradient_checkpointing


def test_trls_vllm_generation_is_chosen_by_settings(tmp_path):
    cpu = Placement("cpu", "float32")
    plain = grpo_config(TINY, tmp_path, 2, cpu)
    assert not plain.use_vllm and plain.model_init_kwargs == {"dtype": "float32"} and plain.use_cpu
    assert plain.per_device_train_batch_size == 2 * TINY.num_generations  # whole groups per process
    server = grpo_config(replace(TINY, use_vllm=True, vllm_mode="server", vllm_server_url="http://trl-vllm:8000"),
                         tmp_path, 1, cpu)
    assert (server.use_vllm, server.vllm_mode, server.vllm_server_base_url) == (True, "server", "http://trl-vllm:8000")
    colocate = grpo_config(replace(TINY, use_vllm=True, vllm_gpu_memory_utilization=0.4), tmp_path, 1, cpu)
    assert (colocate.vllm_mode, colocate.vllm_gpu_memory_utilization) == ("colocate", 0.4)


# ---------------------------------------------------------------------------------------------
# A real round on the bundled model
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_round_on_the_bundled_model_saves_a_loadable_adapter_that_changes_the_policy(model_path, tmp_path,
                                                                                       all_cores):
    # Untrained, this model rarely answers right; a verifier that wants "the" somewhere in the retry
    # passes some of its sampled retries and not others, so groups carry signal.
    the = {"type": "regex", "pattern": r"\bthe\b", "mode": "search", "flags": ["IGNORECASE"]}
    failures = [failure(FRANCE + " Answer in one word.", "London", the),
                failure("Say hello to me.", "Goodbye.", the),
                failure("Name a color of the sky on a clear day.", "Green", the)]
    settings = GRPOSettings(num_generations=4, prompts_per_step=2, max_reflection_tokens=16, max_retry_tokens=16,
                            retry_temperature=1.0, max_steps=2)
    output = tmp_path / "adapter"
    report = await asyncio.to_thread(train_round, str(model_path), None, failures, output, settings, VerifierRuntime())

    assert (output / "adapter_config.json").is_file()
    assert report.steps == 2 and report.failures == 3 and report.left_out == 0
    assert report.groups == 4 and report.skipped_groups < report.groups  # something was learned from
    assert len(report.reward_mean) == 2 and len(report.kl) == 2
    assert all((kl is not None) == step.updated for kl, step in zip(report.kl, report.step_logs))
    assert report.seconds_per_step > 0 and report.samples_per_second > 0 and report.mean_reflection_tokens > 0
    print(f"\nbundled model round: {report.seconds_per_step:.1f} s/step, {report.samples_per_second:.2f} samples/s, "
          f"rewards {report.reward_mean}, skipped {report.skipped_groups}/{report.groups} groups")

    engine = TransformersEngine(str(model_path), "round-test")
    try:
        await engine.load_adapter("r3-v1", output)
        prompt = reflection_prompt(ReflectRetry(engine.tokenizer, VerifierRuntime()), failures[0]).engine_input
        reflection = await engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0.0))
        # The base model's reflection, scored token by token by the serving engine with and without the
        # adapter: the round changed the probability of every one of its tokens.
        scoring = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        scored = [[chunk async for chunk in engine.stream(prompt + reflection.text, scoring, adapter)][0].prompt_tokens
                  for adapter in (None, "r3-v1")]
        n = len(reflection.tokens)
        base, trained = ([t.logprob for t in tokens[-n:]] for tokens in scored)
        assert n > 0 and all(abs(b - t) > 1e-6 for b, t in zip(base, trained, strict=True)), (base, trained)
    finally:
        await engine.close()
