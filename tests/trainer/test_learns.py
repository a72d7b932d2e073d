"""The regression test for "the trainer learns": a reduced planted run must raise held-out success.

The planted suite (bench/planted.py) rewards a retry iff the reflection before it has at most
`MAX_WORDS` words (binary), or scores it by the reflection's length (graded, (32 − words) / 32);
the untrained model's reflections meet the binary rule about a quarter of the time (T = 1).
One GRPO round (`trainer.grpo.train_round`: R3's rollout, the retry, R3's webhook verifier over
loopback HTTP, reflection-only credit) of `STEPS` steps on 8 failures, then one reflection on each
of `HELDOUT` held-out failures is sampled before (adapter disabled) and after (adapter on), with the
same seeds. The test fails unless the rise is significant on the paired samples: for the binary
reward in the share of rule-passing reflections (exact one-sided McNemar p < 0.05), for the graded
one in their mean score (one-sided Wilcoxon signed-rank p < 0.05, `bench.learn.paired_scores`).
`r3 bench learn --suite planted [--reward graded]` runs the whole loop (server, gate, hot-swap).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench import planted
from bench.learn import paired_scores
from r3 import bundled_model
from r3.reflect_retry import ReflectRetry
from r3.settings import Settings
from r3.stats import sign_test_p_value
from trainer.grpo import GRPOSettings, reflection_prompt, train_round
from verifiers import VerifierRuntime, WebhookPolicy

pytestmark = pytest.mark.slow

# Sized to its 5-minute budget on 2 slow cores: 2 steps of 2 failures × G = 8 reflections, at 4× the
# bench's learning rate (2e-4). Measured there (184 s): 6/48 -> 32/48 short reflections, +28/-2,
# p = 4e-7.
STEPS = 2
LEARNING_RATE = 8e-4
HELDOUT = 48


def reflection_words(model, tokenizer, failures: list, seed: int) -> list[int]:
    """Per failure, the words of one reflection sampled as the trainer samples (T = 1, no top-k)."""
    protocol = ReflectRetry(tokenizer, VerifierRuntime())
    prompts = [reflection_prompt(protocol, failure).engine_input for failure in failures]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=planted.REFLECTION_MAX_TOKENS, do_sample=True,
                             temperature=1.0, top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    return [planted.words(text) for text in texts]


@pytest.mark.parametrize("reward", planted.REWARDS)
def test_a_round_on_the_planted_reward_raises_heldout_success_significantly(reward: str, tmp_path: Path,
                                                                           all_cores) -> None:
    model_path = str(bundled_model.resolve(Settings(_env_file=None)))
    # No KL term (TRL's default; it would cost a reference forward a step) and no activation
    # recomputation: what is tested is that the reward moves the policy, fast.
    settings = GRPOSettings(num_generations=8, prompts_per_step=2, learning_rate=LEARNING_RATE, max_steps=STEPS,
                            beta=0.0, gradient_checkpointing=False,
                            max_reflection_tokens=planted.REFLECTION_MAX_TOKENS, device="cpu", dtype="float32")
    with planted.planted_verifier() as url:
        train = planted.planted_failures(8, 0, url, reward)
        report = train_round(model_path, None, train, tmp_path / "adapter", settings,
                             VerifierRuntime(WebhookPolicy(allow_loopback=True)))
    assert report.steps == STEPS and report.skipped_groups < report.groups

    heldout = planted.planted_failures(HELDOUT, 12345, "http://127.0.0.1:9/")  # another seed; never called
    assert not {f.messages[-1]["content"] for f in heldout} & {f.messages[-1]["content"] for f in train}
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
                                      str(tmp_path / "adapter")).eval()
    with model.disable_adapter():
        before = reflection_words(model, tokenizer, heldout, seed=1)
    after = reflection_words(model, tokenizer, heldout, seed=1)
    if reward == "graded":
        row = paired_scores([planted.graded_score(n) for n in before], [planted.graded_score(n) for n in after])
        p = row["p_one_sided"]
        result = (f"held-out mean score {sum(map(planted.graded_score, before)) / HELDOUT:.3f} -> "
                  f"{sum(map(planted.graded_score, after)) / HELDOUT:.3f}, +{row['after_higher']}/"
                  f"-{row['before_higher']}, Wilcoxon p = {p:.3g}")
    else:
        short_before, short_after = ([n <= planted.MAX_WORDS for n in words] for words in (before, after))
        wins = sum(a and not b for b, a in zip(short_before, short_after))
        losses = sum(b and not a for b, a in zip(short_before, short_after))
        p = sign_test_p_value(wins, losses)
        result = (f"held-out short reflections {sum(short_before)}/{HELDOUT} -> {sum(short_after)}/{HELDOUT}, "
                  f"+{wins}/-{losses}, p = {p:.3g}")
    print(f"\n{reward}: {result}; rewards per step {report.reward_mean}")
    assert p < 0.05, result
