"""`r3 train --once` as every process of `accelerate launch` runs it (tests/trainer/test_distributed.py).

Each process other than the main one is given a database, Redis and adapters folder that do not
exist (the folder's path is the first argument): one that touched the store would fail, or leave
the folder behind.
"""

from __future__ import annotations

import os
import sys

from r3.settings import Settings
from trainer.worker import run_trainer

if __name__ == "__main__":
    if os.environ["RANK"] != "0":
        os.environ.update(R3_DATABASE_URL="postgresql://nobody@127.0.0.1:9/none", R3_REDIS_URL="redis://127.0.0.1:9/0",
                          R3_ADAPTERS_DIR=sys.argv[1])
    outcome = run_trainer(Settings(), once=True)
    print(f"process {os.environ['RANK']}: {'follower' if outcome is None else outcome.candidate}", flush=True)
