"""A base-model request on vLLM answers as vLLM alone answers it, beside adapter requests too.

On the CPU, vLLM's LoRA kernels read a row without a LoRA (index -1) as one in the last slot, so a
base row in a step beside adapter rows was computed through the last slot's adapter; R3's engine
has vLLM's worker skip those rows (`r3.engines.vllm_cpu_lora`). The session engine has two LoRA
slots: with two adapters decoding, the last slot holds one of them while the base request runs.
The reference is vLLM's own engine, without R3, with LoRA enabled as `vllm serve --enable-lora`
runs it, asked for the base model with nothing else in flight.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import make_lora

from r3.chat_format import render_prompt
from r3.engines.base import SamplingParams

QUESTION = "Write a long story about a lighthouse keeper and a storm."
BASE = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
async def vllm_alone(model_path: Path) -> list[int]:
    """vLLM's own greedy answer (token ids) to QUESTION for the base model, asked alone."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ids = tokenizer(render_prompt(tokenizer, [{"role": "user", "content": QUESTION}]).text,
                    add_special_tokens=False)["input_ids"]
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model_path), dtype="float32", max_num_seqs=4,
                                                    enable_lora=True, max_loras=2, max_lora_rank=16))
    try:
        async for output in llm.generate({"prompt_token_ids": ids}, VllmSamplingParams(max_tokens=BASE.max_tokens,
                                                                                        temperature=0.0),
                                         request_id="alone"):
            answer = list(output.outputs[0].token_ids)
    finally:
        llm.shutdown()
    return answer


async def test_a_base_request_beside_adapter_requests_answers_as_vllm_alone(vllm_engine, vllm_alone, lora_path,
                                                                           model_path, tmp_path) -> None:
    engine = vllm_engine
    adapters = {"one": lora_path, "two": make_lora(model_path, tmp_path / "two", seed=7, rank=8, alpha=16,
                                                   target_modules=("q_proj", "v_proj"))}
    # The adapters decode through the whole base request: they may not end early.
    longer = SamplingParams(max_tokens=3 * BASE.max_tokens, temperature=0.0,
                            logit_bias=((engine.tokenizer.eos_token_id, -100.0),))
    question = render_prompt(engine.tokenizer, [{"role": "user", "content": QUESTION}]).text
    for name, path in adapters.items():
        await engine.load_adapter(name, path)
    try:
        alone = {name: await engine.generate(question, longer, adapter=name) for name in adapters}
        streams = [engine.stream(question, longer, adapter=name) for name in adapters]
        firsts = [await anext(stream) for stream in streams]  # both adapter rows are decoding: both slots taken

        async def rest(stream, first):
            return [*first.tokens, *[token async for chunk in stream for token in chunk.tokens]]

        adapter_rows = [asyncio.create_task(rest(stream, first)) for stream, first in zip(streams, firsts)]
        base = await engine.generate(question, BASE)
        assert not any(row.done() for row in adapter_rows)  # they decoded beside it all along
        beside = await asyncio.gather(*adapter_rows)
    finally:
        for name in adapters:
            await engine.unload_adapter(name)
    assert base.token_ids == vllm_alone
    for name, tokens in zip(adapters, beside):
        assert [t.token_id for t in tokens] == alone[name].token_ids  # the adapter rows are untouched
    assert all(alone[name].token_ids[:len(vllm_alone)] != vllm_alone for name in adapters)  # adapters change it


@pytest.mark.parametrize(("lora_ids", "masking"), [((1, 2, 1), False), ((1, 0, 2), True)],
                         ids=["every row has a LoRA", "a row has none"])
def test_a_step_runs_vllms_own_kernels_unless_a_row_has_no_lora(lora_ids, masking) -> None:
    """Per step, as vLLM sets its LoRA mapping: rows without a LoRA get no LoRA term, while a step of
    adapter rows only runs vLLM's kernels unwrapped (masking checked in every call cost it 3%)."""
    import torch
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from r3.engines.vllm_cpu_lora import KERNELS  # importing it installs the hook, as vLLM's worker does

    generator = torch.Generator().manual_seed(0)
    lora_a = torch.randn(2, 1, 4, 16, generator=generator)  # [slots, 1, rank, hidden]: both slots hold an adapter
    x = torch.randn(len(lora_ids), 16, generator=generator)
    punica = PunicaWrapperCPU(max_num_batched_tokens=8, max_batches=4, device="cpu")
    # LoRA ids 1 and 2 sit in slots 0 and 1; id 0 is a row without a LoRA (index -1: the last slot, unmasked).
    punica.update_metadata(LoRAMapping(lora_ids, lora_ids, is_prefill=True), lora_index_to_id=[1, 2],
                           max_loras=3, vocab_size=32)
    shrunk = torch.full((1, len(lora_ids), 4), 7.0)
    punica.add_shrink(shrunk, x, (lora_a,), scale=0.5)

    expected = torch.stack([0.5 * lora_a[i - 1, 0] @ row if i > 0 else torch.zeros(4) for i, row in zip(lora_ids, x)])
    torch.testing.assert_close(shrunk[0], expected)
    assert all(hasattr(getattr(lora_ops, name), "__wrapped__") is masking for name in KERNELS)
