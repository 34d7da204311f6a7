"""Fail loud and early on a damaged feedback store: `check_database(path)` runs SQLite's `PRAGMA quick_check` on a
read-only connection before the app opens the store for writing, and refuses a corrupt file with its path and
what to do, instead of starting and writing on (the damage would surface later, as a bare "Error" in a tab)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from feedback.store import FeedbackError


class CorruptStoreError(FeedbackError):
    """The SQLite file failed its integrity check; nothing was written to it."""


def check_database(path: str | Path) -> None:
    """Nothing for a missing file (a new store) or a sound one; CorruptStoreError otherwise."""
    path = Path(path)
    if not path.exists():
        return
    hint = (f"Stop every process using it, keep a copy of the damaged file, then restore your latest backup "
            f"(made with `kaizen feedback backup PATH`) to {path}; or try `sqlite3 {path} .recover`.")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(20)").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise CorruptStoreError(f"the feedback store {path} cannot be read ({e}). {hint}") from e
    if rows != ["ok"]:
        raise CorruptStoreError(f"the feedback store {path} is damaged: {'; '.join(rows[:5])}. {hint}")
