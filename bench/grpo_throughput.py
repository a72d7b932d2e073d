"""GRPO samples/s: R3's round against bare TRL `GRPOTrainer` on the same batch and model.

    python -m bench.grpo_throughput [--steps 3]

Both train the bundled model's LoRA (the same `GRPOConfig`, built by `trainer.grpo.grpo_config`:
G = 8, 2 prompts a step, 32-token reflections at temperature 1, float32 on the CPU) for `steps`
optimizer steps on the same reflection prompts: failed additions of the planted suite.

- R3: `trainer.grpo.train_round`, i.e. TRL's trainer driven by R3's `rollout_func`: G reflections,
  then a greedy retry after each (a second generation), each retry judged by R3's webhook verifier
  (the planted endpoint, over loopback HTTP), groups without signal masked out.
- bare TRL: `GRPOTrainer` with TRL's own generation and a reward function that applies the planted
  rule to the completion directly: no retry, no verifier call.

A sample is one reflection (with its retry, for R3). samples/s = samples / the seconds of
`trainer.train()` (model loading excluded, the same for both). The ratio R3 / TRL is the price of
the retry and the verifier, plus whatever R3's rollout adds. One run each, on a shared machine:
a measurement, not a distribution. Writes bench/results/grpo_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import planted
from bench.common import save, table


@dataclass(frozen=True)
class Config:
    steps: int = 3  # optimizer steps per trainer
    prompts: int = 8  # distinct failures (each step takes 2)
    seed: int = 0


def planted_reward(completions: list[str], **_: Any) -> list[float]:
    """Bare TRL's reward: the planted rule on the reflection itself (no retry, no webhook)."""
    return [1.0 if planted.words(text) <= planted.MAX_WORDS else 0.0 for text in completions]


def measure(config: Config) -> dict[str, Any]:
    """samples/s of both trainers; blocking, CPU-heavy (~1 min a step on 2 shared cores)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from r3 import bundled_model
    from r3.engines.device import placement
    from r3.reflect_retry import ReflectRetry
    from r3.settings import Settings
    from trainer.grpo import (
        GRPOSettings,
        grpo_config,
        lora_config,
        reflection_prompt,
        train_round,
    )
    from verifiers import VerifierRuntime, WebhookPolicy

    settings = GRPOSettings(num_generations=8, prompts_per_step=2, learning_rate=1e-4,
                            max_reflection_tokens=planted.REFLECTION_MAX_TOKENS, max_steps=config.steps,
                            seed=config.seed, device="cpu", dtype="float32")
    model_path = str(bundled_model.resolve(Settings(_env_file=None)))
    results: dict[str, Any] = {}
    with planted.planted_verifier() as url, tempfile.TemporaryDirectory() as scratch:
        batch = planted.planted_failures(config.prompts, config.seed, url)
        report = train_round(model_path, None, batch, Path(scratch) / "r3", settings,
                             VerifierRuntime(WebhookPolicy(allow_loopback=True)))
        results["r3"] = {"samples": sum(step.samples for step in report.step_logs), "steps": report.steps,
                         "samples_per_s": report.samples_per_second,
                         "seconds": report.seconds_per_step * report.steps}

        tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        protocol = ReflectRetry(tokenizer, VerifierRuntime())
        prompts = [reflection_prompt(protocol, failure).engine_input for failure in batch]
        args = grpo_config(settings, Path(scratch) / "trl", settings.prompts_per_step, placement("cpu", "float32"))
        bare = GRPOTrainer(model=model_path, reward_funcs=planted_reward, args=args,
                           train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                           peft_config=lora_config(settings, None))
        started = time.perf_counter()
        bare.train()
        seconds = time.perf_counter() - started
        samples = config.steps * settings.prompts_per_step * settings.num_generations
        results["trl"] = {"samples": samples, "steps": config.steps, "samples_per_s": samples / seconds,
                          "seconds": seconds}
    results["ratio_r3_over_trl"] = results["r3"]["samples_per_s"] / results["trl"]["samples_per_s"]
    return {"config": {"steps": config.steps, "prompts": config.prompts, "num_generations": 8,
                       "prompts_per_step": 2, "reflection_max_tokens": planted.REFLECTION_MAX_TOKENS,
                       "retry_max_tokens": planted.ANSWER_MAX_TOKENS, "threads": os.cpu_count()}, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Config.steps)
    result = measure(Config(steps=parser.parse_args().steps))
    table(["trainer", "steps", "samples", "seconds", "samples/s"],
          [[name, result[name]["steps"], result[name]["samples"], result[name]["seconds"],
            result[name]["samples_per_s"]] for name in ("r3", "trl")])
    print(f"R3 / bare TRL: {result['ratio_r3_over_trl']:.2f}")
    save("grpo_throughput", result)


if __name__ == "__main__":
    main()
