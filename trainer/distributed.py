"""`r3 train` on several processes (`accelerate launch`): the main process leads, the others follow.

Only the main process touches the store: the database, Redis and the adapter registry. It picks
each round's failures, then sends the round (the model, the adapter to start from, the failures,
the GRPO settings) to the other processes, and all of them train it together: `trainer.grpo`'s
trainer shards every step across them (DDP, or DeepSpeed ZeRO through an accelerate config). The
main process alone then writes the adapter, registers it, runs the gate and records the decision,
while the others wait for the next round. When the main process stops, it tells them to stop.

The orders travel over a gloo process group of their own, on the CPU whatever the training
backend: a follower waits there between rounds, for hours while no failures arrive, without a GPU
collective open (NCCL's watchdog would end one after its timeout). If the main process dies, the
launcher ends the others; a follower waits for the main process as long as it lives.

The adapter to start from is read by every process from its path, so on several machines the
adapters folder must be mounted on the same path everywhere, as it is for the servers.

On one process (a plain `r3 train`) there is nobody to send orders to, and nothing here runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist
from accelerate import PartialState

from r3.engines.device import placement
from r3.reflect_retry import verifier_runtime
from r3.settings import Settings
from trainer.data import Failure

if TYPE_CHECKING:  # trainer.grpo imports TRL: the main process loads it only when a round trains
    from trainer.grpo import GRPOSettings

# How long a follower waits for the next order: in effect, as long as the main process lives.
ORDERS_TIMEOUT = timedelta(days=365)


@dataclass(frozen=True)
class RoundOrder:
    """One round, as every process trains it: `train_round`'s arguments, less the output folder
    (only the main process writes the adapter) and the webhook policy (each process makes it from
    its own settings, so secrets do not travel)."""

    model_path: str
    start_adapter: Path | None
    failures: list[Failure]
    settings: GRPOSettings


class Launch:
    """The processes `accelerate launch` started (this one alone without it), and the orders
    between them. Every process must make its `Launch` at start, before anything else collective."""

    def __init__(self, device: str) -> None:
        """`device`: R3_DEVICE, which decides the training backend (gloo on the CPU, NCCL on CUDA)."""
        state = PartialState(cpu=placement(device).device == "cpu")  # joins the others (init_process_group)
        self.processes: int = state.num_processes
        self.is_main: bool = state.is_main_process
        self._orders = dist.new_group(backend="gloo", timeout=ORDERS_TIMEOUT) if self.processes > 1 else None

    def send(self, order: RoundOrder | None) -> None:
        """The main process: the next round for every other process to train (None: stop)."""
        if self._orders is not None:
            dist.broadcast_object_list([order], src=0, group=self._orders)

    def receive(self) -> RoundOrder | None:
        """A follower: the main process's next order, waited for (None: stop)."""
        box: list[RoundOrder | None] = [None]
        dist.broadcast_object_list(box, src=0, group=self._orders)
        return box[0]


def follow(launch: Launch, settings: Settings) -> None:
    """A follower's life: train each round the main process orders, until it says stop."""
    from trainer.grpo import train_round

    runtime = verifier_runtime(settings)
    while (order := launch.receive()) is not None:
        with tempfile.TemporaryDirectory(prefix="r3-round-") as scratch:
            train_round(order.model_path, order.start_adapter, order.failures, Path(scratch) / "adapter",
                        order.settings, runtime)
