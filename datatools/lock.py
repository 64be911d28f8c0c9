"""One converter per split folder: a lock file created with O_CREAT|O_EXCL, removed at the end.

Two converters on one output would clear and write the same shards (a shard of one was read back
as damaged by the other). The lock holds the holder's pid, host and start time, so a refusal
says who holds it. A lock left by a converter that died (kill -9, a crash) is stale: on the same
host its pid is gone, and it is reported and taken over; on another host no pid can be checked,
so the message says which file to remove. Two converters taking over the same stale lock at the
same instant are not told apart.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from datatools.manifest import LOCK_NAME

__all__ = ["OutputLocked", "output_lock"]

log = logging.getLogger(__name__)


class OutputLocked(OSError):
    """Another converter holds the output folder."""


@contextmanager
def output_lock(out_dir: str | Path) -> Iterator[Path]:
    """Hold ``out_dir``'s lock (creating the folder) for the body; removed on any exit."""
    path = Path(out_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    _acquire(path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _acquire(path: Path) -> None:
    """Create the lock, taking over a stale one once; OutputLocked while someone else holds it."""
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if attempt == 0 and _stale(holder):
                log.warning("taking over the stale lock %s of pid %s on %s (started %s): that "
                            "process is gone", path, holder["pid"], holder["host"], holder["started"])
                path.unlink(missing_ok=True)
                continue
            raise OutputLocked(_held_message(path, holder)) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return


def _holder(path: Path) -> dict | None:
    """The lock's content; None if it vanished, is being written or is not ours."""
    try:
        holder = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return holder if isinstance(holder, dict) and {"pid", "host", "started"} <= set(holder) else None


def _stale(holder: dict | None) -> bool:
    """Held by a process of this host that no longer exists."""
    if holder is None or holder["host"] != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)      # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        pass                                # it exists, as another user's process
    return False


def _held_message(path: Path, holder: dict | None) -> str:
    if holder is None:
        return (f"{path.parent} is locked by {path}, which names no converter (being written, or "
                f"damaged): remove it if no converter is running on this folder")
    return (f"{path.parent} is being converted by pid {holder['pid']} on host {holder['host']} since "
            f"{holder['started']}: wait for it to finish, or remove {path} if that process is gone")
