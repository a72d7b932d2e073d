"""R3 on a GPU in one short run: the engine, the app, a GRPO step and the gate, on CUDA.

    bash scripts/gpu-check.sh                 # a GPU machine: everything on CUDA
    bash scripts/gpu-check.sh --device cpu    # the same checks on the CPU (to know the script works)

Self-contained: no network and no model files. It builds a tiny random model of the bundled
model's architecture (SmolLM2-135M-Instruct's config, below, with 2 of its 30 layers: every layer
has the bundled model's shapes, so LoRA adapters do too) with a byte-level BPE tokenizer trained
here on a few sentences (the vocabulary is that tokenizer's), and two random LoRA adapters. The
model writes gibberish: the checks show that R3's machinery runs on the device, not that it learns.

One line a check: PASS, FAIL (with the error) or SKIP (with the Python package that is missing),
and seconds. The exit status is 1 if any check failed.

    engine  the transformers engine from `r3.engines.create_engine` (R3_DEVICE, R3_DTYPE) serves the
            base model and two adapters in one batch; each adapter changes the logprobs
    app     a reflect-retry request through the FastAPI app, in-process: attempt 1 fails its
            verifier, the model reflects, attempt 2 is judged and the episode recorded
    grpo    one GRPO step of `trainer.grpo.train_round` on the device; the adapter it saves fits the model
    gate    `trainer.gate.evaluate_adapter` and `decide` on an engine from the factory: adapter a against the base
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be fetched
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func's "experimental" warning

import torch  # noqa: E402 - after the environment above

# SmolLM2-135M-Instruct's config.json, as `r3 model pull` saves it.
BUNDLED_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "head_dim": 64, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.02,
    "intermediate_size": 1536, "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True, "unk_token_id": 0, "use_cache": True, "vocab_size": 49152,
}
LAYERS = 2
# Its chat template (ChatML) and special tokens, at the same ids (0, 1, 2).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "You are a helpful AI assistant. What is the capital of France? The capital of France is Paris.",
    "Your answer failed the check. Reflect on what went wrong, then try the task again.",
    "Using the numbers 3, 5 and 8 once each, make 24. <answer>(8 - 5) * 8</answer>",
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Berlin"}}</tool_call>',
]
API_KEY = "gpu-check"
IMPOSSIBLE = {"type": "exact", "expected": "a string no model writes: 7f3a9c"}
COIN_FLIP = {"type": "regex", "pattern": "e", "mode": "search"}  # about half of the random model's retries pass
SAMPLING = {"max_tokens": 6, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": [], "top_logprobs": 0}


# ---------------------------------------------------------------------------------------------
# The tiny model and its adapters
# ---------------------------------------------------------------------------------------------


def build_tokenizer():
    """A byte-level BPE tokenizer (every text encodes) with the bundled model's special tokens and
    chat template; its vocabulary is what a few sentences give, a few hundred tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=1024, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=SPECIAL_TOKENS[0], bos_token=SPECIAL_TOKENS[1],
                                   eos_token=SPECIAL_TOKENS[2], pad_token=SPECIAL_TOKENS[2])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(folder: Path) -> int:
    """The tiny random model (and its tokenizer) saved to `folder`, in float32 as the bundled one is;
    returns its vocabulary size."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = build_tokenizer()
    config = AutoConfig.for_model(**{**BUNDLED_CONFIG, "num_hidden_layers": LAYERS, "vocab_size": len(tokenizer)})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def build_adapter(model: Path, folder: Path, seed: int) -> Path:
    """A peft LoRA on attention and MLP with random, non-zero weights (so it changes the output)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model), config).save_pretrained(folder)
    return folder


def settings_for(model: Path, device: str, data_dir: Path):
    """R3's settings for a check: the tiny model on `device`, its state in `data_dir`, one API key."""
    from r3.settings import Settings

    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(_env_file=None, model=str(model), served_model_name="tiny", device=device, data_dir=data_dir,
                    api_keys=[API_KEY], max_batch_size=4, reflection_max_tokens=8)


def failure(number: int, question: str, verifier: dict = IMPOSSIBLE):
    from trainer.data import Failure

    return Failure(episode_id=f"ep_{number}", messages=[{"role": "user", "content": question}], tools=None,
                   tool_choice=None, verifier=verifier, task_kind="generic", sampling=SAMPLING,
                   failed_attempt={"role": "assistant", "content": "London"}, detail="not the expected answer")


# ---------------------------------------------------------------------------------------------
# The checks: each returns a line of what it saw, or raises
# ---------------------------------------------------------------------------------------------


async def check_engine(model: Path, device: str, data_dir: Path, adapters: list[Path]) -> str:
    from r3.chat_format import render_prompt
    from r3.engines import create_engine
    from r3.engines.base import SamplingParams

    engine = await create_engine(settings_for(model, device, data_dir))
    try:
        names = [f"lora-{i}" for i, _ in enumerate(adapters)]
        for name, path in zip(names, adapters):
            await engine.load_adapter(name, path)
        prompt = render_prompt(engine.tokenizer, [{"role": "user", "content": "What is the capital of France?"}]).text
        params = SamplingParams(max_tokens=8, temperature=0.0, top_logprobs=5)
        # Submitted together, so they share the prefill and every decode step: a mixed-adapter batch.
        base, *adapted = await asyncio.gather(*(engine.generate(prompt, params, name) for name in [None, *names]))
        for name, result in zip(names, adapted):
            if result.tokens[0].top == base.tokens[0].top:
                raise AssertionError(f"{name} left the first token's logprobs as the base model's")
        memory = f", {torch.cuda.memory_allocated() / 2**20:.0f} MiB on the GPU" if engine.device.type == "cuda" else ""
        return (f"{engine.device} {str(engine.dtype).removeprefix('torch.')}{memory}; base + {len(names)} adapters "
                f"in one batch, {sum(r.completion_tokens for r in [base, *adapted])} tokens")
    finally:
        await engine.close()


def check_app(model: Path, device: str, data_dir: Path) -> str:
    from fastapi.testclient import TestClient

    from server.app import create_app

    body = {"model": "tiny", "messages": [{"role": "user", "content": "Say the word banana."}], "max_tokens": 6,
            "temperature": 0, "verifier": IMPOSSIBLE, "reflect": {"max_retries": 1}}
    with TestClient(create_app(settings_for(model, device, data_dir))) as client:
        response = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
        if response.status_code != 200:
            raise AssertionError(f"{response.status_code}: {response.text[:300]}")
        info = response.json()["r3"]
        episode = client.get(f"/v1/episodes/{info['episode_id']}", headers={"Authorization": f"Bearer {API_KEY}"})
    if not info["reflected"] or [a["success"] for a in info["attempts"]] != [False, False]:
        raise AssertionError(f"expected a failed attempt, a reflection and a judged retry: {info}")
    if episode.status_code != 200 or len(episode.json()["attempts"]) != 2:
        raise AssertionError(f"the episode was not recorded with both attempts: {episode.status_code}")
    return "2 attempts, 1 reflection, episode recorded"


def check_grpo(model: Path, device: str, output: Path) -> str:
    from r3.engines.adapter_check import AdapterChecker
    from trainer.grpo import GRPOSettings, train_round
    from verifiers import VerifierRuntime

    # Sampled retries judged by a coin flip of a verifier: groups mostly differ in reward, so the step learns.
    settings = GRPOSettings(device=device, num_generations=4, prompts_per_step=2, max_reflection_tokens=8,
                            max_retry_tokens=6, max_steps=1, retry_temperature=1.0)
    failures = [failure(1, "What is the capital of France?", COIN_FLIP),
                failure(2, "Make 24 from 3, 5 and 8.", COIN_FLIP)]
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    report = train_round(str(model), None, failures, output, settings, VerifierRuntime())
    AdapterChecker(str(model)).check("grpo", output)
    step = report.step_logs[0]
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB on the GPU" if on_gpu else ""
    return (f"{report.steps} step, {report.groups} groups ({report.skipped_groups} without signal), "
            f"updated={step.updated}, {report.seconds_per_step:.1f} s/step{peak}; adapter saved and fits")


async def check_gate(model: Path, device: str, data_dir: Path, adapter: Path) -> str:
    from r3.engines import create_engine
    from trainer.data import Success
    from trainer.gate import decide, evaluate_adapter
    from verifiers import VerifierRuntime

    heldout = [failure(3, "Name a fruit."), failure(4, "Spell cat backwards.")]
    regression = [Success("ep_5", [{"role": "user", "content": "Say anything."}], None, None,
                          {"type": "regex", "pattern": "(?s).*"}, "generic", SAMPLING)]
    engine = await create_engine(settings_for(model, device, data_dir))
    try:
        await engine.load_adapter("candidate", adapter)
        candidate = await evaluate_adapter(engine, "candidate", heldout, regression, VerifierRuntime(), reflection_max_tokens=8)
        base = await evaluate_adapter(engine, None, heldout, regression, VerifierRuntime(), reflection_max_tokens=8)
    finally:
        await engine.close()
    decision = decide(candidate, base, alpha=0.05, tolerance=0.05)
    return f"{engine.device}: {'promote' if decision.promote else 'reject'} ({decision.reason})"


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------


def run(name: str, check: Callable[[], str]) -> bool:
    """Run `check`, print its line; False if it failed."""
    started = time.perf_counter()
    try:
        outcome, detail = "PASS", check()
    except ModuleNotFoundError as error:
        outcome, detail = "SKIP", f"needs the Python package {error.name!r} (scripts/gpu-wheels.sh)"
    except Exception as error:  # noqa: BLE001 - every failure is reported, and the next check runs
        traceback.print_exc(file=sys.stderr)
        outcome, detail = "FAIL", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    print(f"{outcome} {name:<6} {time.perf_counter() - started:6.1f} s  {detail}", flush=True)
    return outcome != "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu", "auto"], default="cuda",
                        help="R3_DEVICE for every check (default: cuda)")
    device = parser.parse_args().device
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"r3 gpu-check: --device {device}; torch {torch.__version__}, {gpu}, python {platform.python_version()}",
          flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="r3-gpu-check-") as scratch_dir:
        scratch = Path(scratch_dir)
        model, data = scratch / "tiny-model", scratch / "data"
        adapters = [scratch / f"lora-{seed}" for seed in (1, 2)]

        def setup() -> str:
            vocabulary = build_model(model)
            for seed, adapter in enumerate(adapters, start=1):
                build_adapter(model, adapter, seed)
            return (f"random model of the bundled architecture ({LAYERS} layers, vocabulary {vocabulary}), "
                    f"2 random LoRA adapters")

        results = [run("setup", setup)]
        if results[0]:
            results += [
                run("engine", lambda: asyncio.run(check_engine(model, device, data, adapters))),
                run("app", lambda: check_app(model, device, data)),
                run("grpo", lambda: check_grpo(model, device, scratch / "grpo-adapter")),
                run("gate", lambda: asyncio.run(check_gate(model, device, data, adapters[0]))),
            ]
    print(f"{'all passed' if all(results) else 'FAILED'} in {time.perf_counter() - started:.0f} s", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
