"""A local write-ahead journal of episodes: JSON lines in segment files under the data dir.

Every episode is appended here before its response is sent, so neither a database outage nor a
killed process loses it. A segment is deleted once the database holds everything in it. Each
process writes in a folder of its own that it holds a lock on; a folder whose lock is free belonged
to a process that died, and a live process adopts its segments and replays them (at start, and now
and then, for a process that exits after this one started). A folder is locked before it gets its
`process-` name, so no starting process mistakes a live neighbour's new folder for a dead one's. A
write reaches the operating system at once (it survives the process); `fsync` at rotation bounds
what a machine crash could take. Records the database refuses for what they hold (not for being
down) are set aside in `rejected.jsonl`, for an operator.

A journal that cannot be written (its disk full or read-only) says so before anyone relies on it:
`problem()` is checked before a request starts generating, and `append` raises `JournalUnavailable`
(leaving no partial line behind) instead of a bare OSError. The condition clears by itself: once a
write failed, `problem()` probes the folder until a write succeeds again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r3.store import fast_json
from r3.store.errors import JournalUnavailable


@dataclass(eq=False)
class Segment:
    path: Path
    written: int = 0  # entries appended
    committed: int = 0  # entries the database confirmed through the in-memory path
    needs_replay: bool = False  # some entries skipped the in-memory path: replay the file
    closed: bool = False
    opened_at: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.closed and not self.needs_replay and self.committed >= self.written


class Journal:
    def __init__(self, directory: Path, reserve_bytes: int = 0) -> None:
        """A journal in a folder of its own under `directory`. `reserve_bytes`: the free space below
        which `problem()` says the journal cannot take more (an episode may be as large as a request)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.root = directory
        self.reserve_bytes = reserve_bytes
        self._failure: str | None = None  # why the last write failed, until a probe succeeds
        name = f"process-{time.time_ns():020d}-{os.getpid()}"
        # Made and locked under a name no adopter looks at, then renamed: a `process-*` folder
        # without a held lock is always a dead process's.
        nascent = directory / f".new-{name}"
        nascent.mkdir()
        # fcntl rather than filelock: the lock is held across the folder's rename, and a filelock is
        # bound to its path.
        self._lock = os.open(nascent / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.directory = directory / name
        nascent.rename(self.directory)
        self.segments: list[Segment] = []
        self.adopt()
        self._sequence = 0
        self._fd, self.current = self._open()
        self.segments.append(self.current)

    def adopt(self) -> int:
        """Take over the segments of processes that died (at start, and again now and then: a process
        that was still shutting down when this one started leaves its folder later). Returns how many."""
        # Counted as written, so the backlog includes what a previous process left.
        adopted = [Segment(path, written=_lines(path), closed=True, needs_replay=True)
                   for path in self._adopt_orphans(self.root)]
        # Before our own: older episodes first (the revision guard makes the order harmless anyway).
        self.segments[:0] = adopted
        return len(adopted)

    def _adopt_orphans(self, root: Path) -> list[Path]:
        """Move the segments of dead processes into our folder, oldest first."""
        adopted: list[Path] = []
        for folder in sorted(root.glob("process-*")):
            if folder == self.directory:
                continue
            try:
                lock = os.open(folder / ".lock", os.O_WRONLY)
            except FileNotFoundError:
                continue  # another starting process adopted it a moment ago
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock)
                continue  # a live process owns it
            try:
                for path in sorted(folder.glob("*segment-*.jsonl")):
                    adopted.append(path.rename(self.directory / f"adopted-{folder.name}-{path.name}"))
                shutil.rmtree(folder, ignore_errors=True)  # gone already if a neighbour adopted it first
            finally:
                os.close(lock)
        return adopted

    def _open(self) -> tuple[int, Segment]:
        """A new segment file, opened for appending (raises OSError when none can be made)."""
        self._sequence += 1
        path = self.directory / f"segment-{self._sequence:09d}.jsonl"
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), Segment(path)

    def append(self, record: dict[str, Any]) -> Segment:
        """Write `record` as one line of the current segment. Raises `JournalUnavailable` when the
        disk refuses it, with the segment as it was before (no partial line)."""
        line = (fast_json.dumps(record) + "\n").encode()
        start = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, line)  # one O_APPEND write: lines never interleave
            while written < len(line):  # a short write (a signal, or the last bytes of a disk): finish the line
                written += os.write(self._fd, line[written:])
        except OSError as error:
            os.ftruncate(self._fd, start)  # the next line must not be glued to a partial one
            raise self._failed(error) from error
        self.current.written += 1
        return self.current

    def problem(self) -> str | None:
        """Why an episode cannot be journaled now (None: it can): the last write failed and the folder
        still refuses one, or its disk has no more than `reserve_bytes` free. Cheap enough to ask
        before every request (one `statvfs`; a probe write only while a failure is recorded)."""
        if self._failure is not None:
            try:
                probe = self.directory / ".probe"
                probe.write_bytes(b"\n")
                probe.unlink()
            except OSError:
                return self._failure
            self._failure = None
        disk = os.statvfs(self.directory)
        free = disk.f_bavail * disk.f_frsize
        if free <= self.reserve_bytes:
            return (f"the episode journal's disk ({self.root}) has {free} bytes free, no more than the "
                    f"{self.reserve_bytes} it keeps in reserve (R3_JOURNAL_RESERVE_BYTES)")
        return None

    def _failed(self, error: OSError) -> JournalUnavailable:
        self._failure = f"the episode journal ({self.root}) cannot be written: {error.strerror or error}"
        return JournalUnavailable(self._failure)

    def reject(self, record: Any, reason: str) -> None:
        """Set aside a record the database will not take, for an operator to look at (and not retried).

        A record that cannot be written as JSON (nested deeper than the encoder goes) is kept as its
        `repr`-free id, with the encoder's complaint added to the reason."""
        entry = {"rejected_at": time.time(), "reason": reason, "record": record}
        try:
            line = fast_json.dumps(entry)
        except (ValueError, TypeError, RecursionError) as error:
            episode_id = record.get("id") if isinstance(record, dict) else None
            line = fast_json.dumps({**entry, "record": {"id": episode_id},
                                    "reason": f"{reason}; the record itself could not be encoded ({type(error).__name__})"})
        with open(self.root / "rejected.jsonl", "ab") as file:
            file.write(line.encode() + b"\n")
            file.flush()
            os.fsync(file.fileno())

    def rotate(self) -> None:
        """Close the current segment (if it has entries) and start a new one; when no new one can be
        made (the disk is full), keep appending to the current one and let `problem()` say why."""
        if self.current.written == 0:
            return
        os.fsync(self._fd)
        try:
            fd, segment = self._open()
        except OSError as error:
            self._failed(error)
            return
        os.close(self._fd)
        self.current.closed = True
        self._fd, self.current = fd, segment
        self.segments.append(segment)

    def close(self) -> None:
        """Stop writing; a folder left with no pending segment is removed, else the next start adopts it."""
        os.fsync(self._fd)
        os.close(self._fd)
        self.current.closed = True
        for segment in [s for s in self.segments if s.done or s.written == 0 and not s.needs_replay]:
            self.delete(segment)
        if not self.segments:
            shutil.rmtree(self.directory)
        os.close(self._lock)

    def delete(self, segment: Segment) -> None:
        segment.path.unlink(missing_ok=True)
        self.segments.remove(segment)

    @staticmethod
    def read(segment: Segment) -> tuple[list[Any], list[str]]:
        """The segment's records, and the complete lines that are not JSON (text, for the rejected file).

        A torn last line (the process died mid-write, before its newline) is skipped: its episode
        never got a response. A line nested too deep for the decoder counts as not JSON, so it is set
        aside instead of stopping the replay of everything after it."""
        data = segment.path.read_bytes()
        lines = data.split(b"\n")
        if lines and lines[-1] and not data.endswith(b"\n"):
            lines.pop()  # torn
        records, unreadable = [], []
        for line in filter(None, lines):
            try:
                records.append(json.loads(line))
            except (ValueError, RecursionError):  # JSONDecodeError and undecodable bytes are ValueErrors
                unreadable.append(line.decode("utf-8", "replace"))
        return records, unreadable

    def pending(self) -> list[Segment]:
        """Closed segments whose entries the database may not hold yet."""
        return [s for s in self.segments if s.closed and not s.done]


def _lines(path: Path) -> int:
    """How many complete entries a segment file holds."""
    return path.read_bytes().count(b"\n")
