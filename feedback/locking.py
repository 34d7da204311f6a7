"""SQLite write coordination for the feedback store: a write lock and a background checkpointer.

`lock_for(db_path)` gives the `WriteLock` shared by every Store on that file in this process: a
`threading.Lock` plus a `filelock` on `<db>.lock` between processes, taken with a timeout. Writers queue on it instead
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

from filelock import FileLock, Timeout

CHECKPOINT_INTERVAL_S = 0.5
POLL_S = 1e-3  # how often a waiting writer retries the other process's lock (filelock's default 50 ms stretches tails)

_LOCKS: dict[str, "WriteLock"] = {}
_LOCKS_GUARD = threading.Lock()


class WriteLock:
    """threading.Lock (this process) + a filelock on a side file (other processes), with a timeout. The
    threading lock comes first: a FileLock shared by threads counts re-entries, it does not exclude them."""

    def __init__(self, lock_path: str, timeout_s: float):
        self.thread_lock = threading.Lock()
        self.timeout_s = timeout_s
        self.file_lock = FileLock(lock_path, mode=0o600, thread_local=False)

    @contextmanager
    def hold(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout_s
        if not self.thread_lock.acquire(timeout=self.timeout_s):
            raise sqlite3.OperationalError("database is locked (write lock timeout)")
        try:
            try:
                self.file_lock.acquire(timeout=max(0.0, deadline - time.monotonic()), poll_interval=POLL_S)
            except Timeout:
                raise sqlite3.OperationalError("database is locked (another process holds it)") from None
            try:
                yield
            finally:
                self.file_lock.release()
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
