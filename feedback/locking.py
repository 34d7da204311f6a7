"""SQLite write coordination for the feedback store: a write lock and a background checkpointer.

`lock_for(db_path)` gives the `WriteLock` shared by every Store on that file in this process: a
`threading.Lock` plus an `flock` on `<db>.lock` between processes, taken with a timeout. Writers queue on it instead
of spinning in SQLite's busy handler, whose sleeps (up to 100 ms) starve writers and stretch tail latency.
`Checkpointer` runs `wal_checkpoint(PASSIVE)` shortly after writes on its own connection, so the fsync of a
checkpoint is not paid by a UI request.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: in-process lock only
    fcntl = None

CHECKPOINT_INTERVAL_S = 0.5

_LOCKS: dict[str, "WriteLock"] = {}
_LOCKS_GUARD = threading.Lock()


class WriteLock:
    """threading.Lock (this process) + flock on a side file (other processes), with a timeout."""

    def __init__(self, lock_path: str, timeout_s: float):
        self.thread_lock = threading.Lock()
        self.timeout_s = timeout_s
        self.fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600) if fcntl else None

    @contextmanager
    def hold(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout_s
        if not self.thread_lock.acquire(timeout=self.timeout_s):
            raise sqlite3.OperationalError("database is locked (write lock timeout)")
        try:
            if self.fd is not None:
                pause = 5e-5
                while True:
                    try:
                        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise sqlite3.OperationalError("database is locked (another process holds it)")
                        time.sleep(pause)
                        pause = min(pause * 2, 1e-3)
            try:
                yield
            finally:
                if self.fd is not None:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.thread_lock.release()


def lock_for(db_path: Path, timeout_s: float) -> WriteLock:
    key = os.path.realpath(db_path)
    with _LOCKS_GUARD:
        if key not in _LOCKS:
            _LOCKS[key] = WriteLock(key + ".lock", timeout_s)
        return _LOCKS[key]


def _forget_locks_after_fork() -> None:  # a child must not share the parent's flock description
    global _LOCKS_GUARD
    _LOCKS.clear()
    _LOCKS_GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_after_fork)


class Checkpointer(threading.Thread):
    """Runs `wal_checkpoint(PASSIVE)` on its own connection shortly after writes, so the fsync of a checkpoint
    is not paid by a UI request. Stops with `Store.close()` or when the Store is garbage-collected."""

    def __init__(self, store):
        super().__init__(name=f"kaizen-checkpoint-{store.path.name}", daemon=True)
        self.store_ref = weakref.ref(store)
        self.path = store.path
        self.dirty = False
        self.stopped = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self.stopped.wait(CHECKPOINT_INTERVAL_S) and self.store_ref() is not None:
                if self.dirty:
                    self.dirty = False
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error:
                        pass  # best effort: the in-line autocheckpoint bounds the WAL anyway
        finally:
            conn.close()
