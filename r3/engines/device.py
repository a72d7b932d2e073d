"""Where the model runs and in which dtype: `R3_DEVICE` and `R3_DTYPE` resolved on this machine.

The transformers engine, the gate (through `r3.engines.create_engine`) and the GRPO round all take
their device and dtype from `placement`, so a model is never loaded in float32 on a GPU, nor in
bfloat16 on a CPU that computes it slowly, unless a setting asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Device = Literal["cpu", "cuda"]
DType = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class Placement:
    device: Device
    dtype: DType


def placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """`R3_DEVICE` and `R3_DTYPE` made concrete.

    device "auto": CUDA when torch sees a GPU, else the CPU. dtype "auto": bfloat16 on CUDA
    (float16 on GPUs older than Ampere, which lack bfloat16), float32 on the CPU (bfloat16 is slow
    on CPUs without AVX512-BF16, and half precision saves nothing there that matters at 135M).
    Raises ValueError for "cuda" when torch sees no GPU (a CPU-only torch build, or no driver).
    """
    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"R3_DEVICE must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and not cuda:
        raise ValueError(f"R3_DEVICE=cuda, but torch {torch.__version__} sees no CUDA device")
    if dtype == "auto":
        if device == "cpu":
            dtype = "float32"
        else:
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"R3_DTYPE must be auto, float32, bfloat16 or float16, not {dtype!r}")
    return Placement(device, dtype)
