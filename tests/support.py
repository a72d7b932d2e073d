"""Test support: a real uvicorn server in a background thread, and real LoRA adapters to load."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import uvicorn

# Two tools with closed schemas, which constrained decoding can hold the bundled model to.
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Rome"]}},
    "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"timezone": {"type": "string", "maxLength": 20}},
    "required": ["timezone"], "additionalProperties": False}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """`with ThreadedServer(app) as url:` — a real HTTP server for the block's duration."""

    def __init__(self, app, startup_timeout_s: float = 180) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.startup_timeout_s = startup_timeout_s

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def make_lora(model_path: Path, folder: Path, seed: int, rank: int = 4, alpha: int = 8,
              target_modules: tuple[str, ...] = ("q_proj",)) -> Path:
    """A real peft LoRA adapter with random, non-zero weights (so it changes the output), saved to `folder`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def make_model(model_path: Path, folder: Path, **changes) -> Path:
    """A randomly initialised model of `model_path`'s architecture with config `changes` (e.g. another
    `hidden_size`), saved to `folder`: the base of adapters made for a model other than ours."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_path)
    for key, value in changes.items():
        setattr(config, key, value)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def truncated_copy(adapter: Path, folder: Path) -> Path:
    """A copy of `adapter` in `folder` whose weights file is cut in half, as an interrupted copy leaves it."""
    shutil.copytree(adapter, folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder
