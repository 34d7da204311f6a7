"""Fail loud and early on a damaged store: `check_database(path)` runs SQLite's `PRAGMA quick_check` on a
read-only connection before the app opens the feedback store for writing, and refuses a corrupt file with its path
and what to do, instead of starting and writing on (the damage would surface later, as a bare "Error" in a tab).
`quick_check(path)` is the check itself; the document store (agent/retrieval.py) runs it on Chroma's SQLite file."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from feedback.store import FeedbackError


class CorruptStoreError(FeedbackError):
    """A store failed its integrity check (or could not be opened); nothing was written to it."""


def quick_check(path: str | Path) -> list[str]:
    """What SQLite's quick_check finds wrong with the file (at most 20 lines); [] for a sound or missing file."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(20)").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return [f"cannot be read ({e})"]
    return [] if rows == ["ok"] else rows


def check_database(path: str | Path) -> None:
    """Nothing for a missing file (a new store) or a sound one; CorruptStoreError otherwise."""
    path = Path(path)
    problems = quick_check(path)
    if not problems:
        return
    hint = (f"Stop every process using it, keep a copy of the damaged file, then restore your latest backup "
            f"(made with `kaizen feedback backup PATH`) to {path}; or try `sqlite3 {path} .recover`.")
    if len(problems) == 1 and problems[0].startswith("cannot be read"):
        raise CorruptStoreError(f"the feedback store {path} {problems[0]}. {hint}")
    raise CorruptStoreError(f"the feedback store {path} is damaged: {'; '.join(problems[:5])}. {hint}")
