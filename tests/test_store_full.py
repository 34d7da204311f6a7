"""A full disk while writing feedback, made for real: SQLite's `max_page_count` on a real file (KAIZEN_MAX_DB_MB)
makes SQLite itself answer SQLITE_FULL ("database or disk is full"), the error a full disk gives. The writer gets
one sentence (StoreFullError, a FeedbackError the handlers already show in words), the operator one log line, and
nothing of the refused write is stored while everything before it stays."""
from __future__ import annotations

import errno
import logging
import sqlite3

import pytest

from feedback.store import STORE_FULL, Store, StoreFullError, is_disk_full


def fill_until_full(store: Store, uid: int, conv: int) -> int:
    """Write 4 KB messages until the store refuses one; the number written."""
    for n in range(10_000):
        try:
            store.add_message(conv, "user", f"message {n} " + "x" * 3900, user_id=uid)
        except StoreFullError:
            return n
    raise AssertionError("the store never filled up")


def test_a_full_store_refuses_in_words_keeps_what_it_had_and_logs_one_line(tmp_path, caplog):
    path = tmp_path / "kaizen.db"
    store = Store(path, max_db_mb=0.5)
    uid = store.ensure_user("alice")
    conv = store.new_conversation(uid, title="t")
    q = store.add_message(conv, "user", "question", user_id=uid)
    with caplog.at_level(logging.ERROR, logger="kaizen.store"):
        written = fill_until_full(store, uid, conv)
    assert written > 10
    records = [r for r in caplog.records if r.name == "kaizen.store"]
    assert len(records) == 1 and str(path) in records[0].getMessage() and "disk is full" in records[0].getMessage()
    assert records[0].exc_info is None  # one line, no traceback
    a = store.add_message(conv, "assistant", "a short answer", user_id=uid, parent_id=q)  # fits in a page's room
    for _ in range(200):
        try:
            a = store.add_message(conv, "assistant", "a short answer", user_id=uid, parent_id=q)
        except StoreFullError:
            break
    with pytest.raises(StoreFullError) as err:  # a rating needs a page too once every page is taken
        for _ in range(200):
            store.rate(a, uid, 1, ["other"], "c" * 1500)
    assert str(err.value) == STORE_FULL and "disk is full" in str(err.value) and "not saved" in str(err.value)
    assert isinstance(err.value, ValueError)  # the chat handlers' `except ValueError` shows it as a warning
    store.close()
    with sqlite3.connect(path) as db:  # what was acknowledged is all there; the refused answer is not
        rows = db.execute("SELECT content FROM messages WHERE content LIKE 'message %' ORDER BY id").fetchall()
        assert len(rows) == written and rows[-1][0].startswith(f"message {written - 1} ")
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    reopened = Store(path)  # no cap: the same file takes writes again (space freed)
    assert reopened.add_message(conv, "user", "after", user_id=uid, parent_id=q)
    reopened.close()


def test_what_counts_as_a_full_disk():
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
