"""The trainer beside `r3 serve`: `r3 train` in a process of its own, supervised.

Started once the server is up, started again when it dies (after 2 s, then twice as long each time
up to a minute; back to 2 s once it has run a minute), stopped with the server. It inherits the
server's environment, so both use the same database, Redis and adapters folder. Its output goes to
a log file, which the startup banner and the admin API name.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from server.admin_protocol import TrainerStatus

log = logging.getLogger("r3.trainer")

FIRST_DELAY_S = 2.0
MAX_DELAY_S = 60.0
STEADY_S = 60.0  # a trainer that ran this long before dying is restarted after FIRST_DELAY_S again
STOP_TIMEOUT_S = 30.0  # from SIGTERM to SIGKILL


PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_the_server() -> None:
    """Run in the trainer's process before `r3 train` starts (Linux): the kernel sends it SIGTERM when
    the thread that started it ends (prctl PR_SET_PDEATHSIG), so a server killed outright (SIGKILL,
    the OOM killer) leaves no trainer behind. The event loop's thread starts it and lives as long as
    the server does."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TrainerSupervisor:
    """`await start()` once the server is ready, `await stop()` before it shuts down; `status()` any time."""

    def __init__(self, log_path: Path, command: Sequence[str] = (sys.executable, "-m", "r3", "train")) -> None:
        self.log_path = log_path
        self.command = list(command)
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._last_exit: str | None = None
        self._task: asyncio.Task | None = None
        self._stopped = False

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._supervise(), name="trainer-supervisor")

    async def stop(self) -> None:
        """Stop supervising (no restart), then the trainer: SIGTERM, and SIGKILL after STOP_TIMEOUT_S."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._process = None

    def status(self) -> TrainerStatus:
        process = self._process
        if process is not None and process.returncode is None:
            return TrainerStatus(running=True, detail=f"`r3 train` runs beside this server (pid {process.pid}); it "
                                 "takes up a requested round on its next check", pid=process.pid,
                                 restarts=self.restarts, log=str(self.log_path))
        if self._stopped:
            return TrainerStatus(running=False, detail="stopped with the server", restarts=self.restarts,
                                 log=str(self.log_path))
        said = f"it {self._last_exit}; " if self._last_exit else ""
        return TrainerStatus(running=False, detail=f"the trainer beside this server is not running: {said}it is "
                             f"started again shortly; see {self.log_path}", restarts=self.restarts,
                             log=str(self.log_path))

    async def _supervise(self) -> None:
        delay = FIRST_DELAY_S
        while True:
            started = time.monotonic()
            with self.log_path.open("ab") as output:
                # A session of its own: a signal to the server's process group (Ctrl-C, `kill -TERM -PGID`,
                # a service manager) stops the server, and the server stops the trainer (`stop`); the
                # trainer dying of that signal first would read as a crash to restart.
                self._process = await asyncio.create_subprocess_exec(*self.command, stdout=output,
                                                                     stderr=subprocess.STDOUT,
                                                                     stdin=subprocess.DEVNULL,
                                                                     start_new_session=True,
                                                                     preexec_fn=_die_with_the_server
                                                                     if sys.platform == "linux" else None)
            code = await self._process.wait()
            if self._stopped:  # stopping: its exit is the stop's doing
                return
            self._last_exit = f"exited with status {code} at {time.strftime('%H:%M:%S')}"
            if time.monotonic() - started >= STEADY_S:
                delay = FIRST_DELAY_S
            log.warning("the trainer %s; starting it again in %.0f s (its log: %s)", self._last_exit, delay,
                        self.log_path)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
            self.restarts += 1
