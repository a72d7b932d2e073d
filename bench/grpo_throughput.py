"""GRPO samples/s: R3's round against bare TRL `GRPOTrainer` on the same batch and model.

    python -m bench.grpo_throughput [--rounds 2] [--steps 2] [--threads N]

Both train the bundled model's LoRA (the same `GRPOConfig`, built by `trainer.grpo.grpo_config`:
G = 8, 2 prompts a step, 32-token reflections at temperature 1 with no top-k, float32 on the CPU,
gradient checkpointing, KL to the base model) for `steps` optimizer steps on the same reflection
prompts: failed additions of the planted suite.

- R3: `trainer.grpo.train_round`, i.e. TRL's trainer driven by R3's `rollout_func`: G reflections,
  then a greedy retry after each (a second generation, at most 8 tokens), each retry judged by R3's
  webhook verifier (the planted endpoint, over loopback HTTP), groups without signal masked out.
- bare TRL: `GRPOTrainer` with TRL's own generation and a reward function that applies the planted
  rule to the completion directly: no retry, no verifier call.

The two alternate, `rounds` times each (R3, TRL, R3, TRL, ...), each round a trainer built anew, so
that a change of the machine's load falls on both; the load average is recorded around each round.
A sample is one reflection (with its retry, for R3). samples/s = samples / the seconds of
`trainer.train()` (model loading excluded, the same for both), summed over the rounds; the ratio
R3 / TRL is the price of the retry and the verifier, less what R3's sampler saves (a group's prompt
computed once, the retries continuing the reflections' KV cache: `trainer.grpo.PolicySampler`).

`profile` gives the wall seconds spent in each main part of a round (`parts_of_a_round`), summed over
the rounds (cumulative: a part includes the parts it calls). `--threads` sets torch's threads
(default: torch's own, one per core); on a machine shared with other work, one thread keeps the
measurement from being dominated by OpenMP threads waiting for each other.
Writes bench/results/grpo_throughput.json.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import planted
from bench.common import save, table


@dataclass(frozen=True)
class Config:
    rounds: int = 2  # alternations: each trainer trains this many times
    steps: int = 2  # optimizer steps per round
    prompts: int = 8  # distinct failures (each step takes 2)
    threads: int | None = None  # torch's threads (None: torch's default)
    seed: int = 0


def planted_reward(completions: list[str], **_: Any) -> list[float]:
    """Bare TRL's reward: the planted rule on the reflection itself (no retry, no webhook)."""
    return [1.0 if planted.words(text) <= planted.MAX_WORDS else 0.0 for text in completions]


def parts_of_a_round() -> dict[str, tuple[Any, str]]:
    """The functions timed, by the part of a round they are: (the class or module holding it, its name)."""
    import torch
    from accelerate.optimizer import AcceleratedOptimizer
    from transformers.generation.utils import GenerationMixin
    from trl import GRPOTrainer

    import trainer.grpo
    from trainer.grpo import PolicySampler, ReflectionRollout

    return {
        "rollout (TRL: generation; R3: rollout_func)": (GRPOTrainer, "_generate"),
        "  R3: rollout_func (+ retry prompts, verdicts)": (ReflectionRollout, "__call__"),
        "    R3: its sampler (reflections, retries)": (PolicySampler, "__call__"),
        "      R3: a group's prompt, computed once": (trainer.grpo, "shared_prompts"),
        "  transformers generate()": (GenerationMixin, "generate"),
        "log-prob forward passes (reference, policy)": (GRPOTrainer, "_get_per_token_logps_and_entropies"),
        "backward": (torch.autograd, "backward"),
        "optimizer step": (AcceleratedOptimizer, "step"),
    }


@contextmanager
def stopwatches(parts: dict[str, tuple[Any, str]]) -> Iterator[dict[str, float]]:
    """`with stopwatches(parts) as seconds:` each part's function, replaced where it is looked up,
    adds its wall seconds to `seconds[part]` (a call inside a call of the same function counts once);
    the functions are put back at the end. Wall time of the calls themselves, unlike a profiler's
    hooks, which lost the frames around R3's rollout."""
    seconds = dict.fromkeys(parts, 0.0)
    originals = [(owner, name, vars(owner)[name]) for owner, name in parts.values()]

    def timed(part: str, function: Callable[..., Any]) -> Callable[..., Any]:
        depth = 0

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal depth
            depth += 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                depth -= 1
                if depth == 0:
                    seconds[part] += time.perf_counter() - started
        return call

    try:
        for (part, (owner, name)), (_, _, original) in zip(parts.items(), originals, strict=True):
            setattr(owner, name, timed(part, original))
        yield seconds
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def measure(config: Config) -> dict[str, Any]:
    """samples/s of both trainers, alternating; blocking, CPU-heavy (minutes a step on 2 shared cores)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from r3 import bundled_model
    from r3.engines.device import placement
    from r3.reflect_retry import ReflectRetry
    from r3.settings import Settings
    from trainer.grpo import GRPOSettings, build_trainer, grpo_config, lora_config, reflection_prompt
    from verifiers import VerifierRuntime, WebhookPolicy

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    settings = GRPOSettings(num_generations=8, prompts_per_step=2, learning_rate=1e-4,
                            max_reflection_tokens=planted.REFLECTION_MAX_TOKENS, max_steps=config.steps,
                            seed=config.seed, device="cpu", dtype="float32")
    model_path = str(bundled_model.resolve(Settings(_env_file=None)))
    parts = parts_of_a_round()
    totals = {name: {"samples": 0, "seconds": 0.0, "profile": dict.fromkeys(parts, 0.0)} for name in ("r3", "trl")}
    rounds: list[dict[str, Any]] = []
    with planted.planted_verifier() as url, tempfile.TemporaryDirectory() as scratch:
        batch = planted.planted_failures(config.prompts, config.seed, url)
        tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        prompts = [reflection_prompt(ReflectRetry(tokenizer, VerifierRuntime()), failure).engine_input
                   for failure in batch]
        for number in range(config.rounds):
            for name in ("r3", "trl"):
                if name == "r3":  # what train_round builds and trains
                    trainer, _, _ = build_trainer(model_path, None, batch, Path(scratch) / name, settings,
                                                  VerifierRuntime(WebhookPolicy(allow_loopback=True)))
                else:
                    trainer = GRPOTrainer(
                        model=model_path, reward_funcs=planted_reward,
                        args=grpo_config(settings, Path(scratch) / name, settings.prompts_per_step,
                                         placement("cpu", "float32")),
                        train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                        peft_config=lora_config(settings, None))
                load_before = [round(value, 2) for value in os.getloadavg()]
                with stopwatches(parts) as spent:
                    started = time.perf_counter()
                    trainer.train()
                    seconds = time.perf_counter() - started
                samples = trainer.state.global_step * settings.prompts_per_step * settings.num_generations
                del trainer
                totals[name]["samples"] += samples
                totals[name]["seconds"] += seconds
                totals[name]["profile"] = {part: totals[name]["profile"][part] + spent[part] for part in parts}
                rounds.append({"round": number, "trainer": name, "samples": samples, "seconds": seconds,
                               "load_before": load_before, "load_after": [round(v, 2) for v in os.getloadavg()]})
                print(f"round {number} {name}: {seconds:.1f} s, load {load_before} -> {rounds[-1]['load_after']}",
                      flush=True)
    results: dict[str, Any] = {
        name: {**total, "samples_per_s": total["samples"] / total["seconds"]} for name, total in totals.items()}
    results["ratio_r3_over_trl"] = results["r3"]["samples_per_s"] / results["trl"]["samples_per_s"]
    return {"config": {"rounds": config.rounds, "steps": config.steps, "prompts": config.prompts,
                       "num_generations": 8, "prompts_per_step": 2,
                       "reflection_max_tokens": planted.REFLECTION_MAX_TOKENS,
                       "retry_max_tokens": planted.ANSWER_MAX_TOKENS, "torch_threads": torch.get_num_threads()},
            **results, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=Config.rounds)
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--threads", type=int, default=Config.threads)
    args = parser.parse_args()
    result = measure(Config(rounds=args.rounds, steps=args.steps, threads=args.threads))
    table(["trainer", "samples", "seconds", "samples/s"],
          [[name, result[name]["samples"], result[name]["seconds"], result[name]["samples_per_s"]]
           for name in ("r3", "trl")])
    table(["part of the rounds (cumulative s)", "r3", "trl"],
          [[part, result["r3"]["profile"][part], result["trl"]["profile"][part]] for part in result["r3"]["profile"]])
    print(f"R3 / bare TRL: {result['ratio_r3_over_trl']:.2f}")
    save("grpo_throughput", result)


if __name__ == "__main__":
    main()
