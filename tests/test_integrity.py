"""A corrupt kaizen.db is refused at start, with its path and the backup hint, and nothing writes to it."""
from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from feedback.integrity import CorruptStoreError, check_database
from feedback.store import Store

ROOT = Path(__file__).resolve().parents[1]


def filled_db(path: Path) -> Path:
    store = Store(path)
    uid = store.ensure_user("alice")
    conv = store.new_conversation(uid, title="t")
    for i in range(300):
        store.add_message(conv, "user", f"question {i} " + "lorem ipsum " * 30, user_id=uid)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def corrupt_inner_pages(path: Path) -> None:
    """Overwrite the middle of the file (not the header page) with garbage."""
    with sqlite3.connect(path) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for offset in range(3 * page, size - page, 5 * page):
            f.seek(offset + 16)
            f.write(os.urandom(page // 2))


def test_a_sound_or_missing_store_passes(tmp_path):
    check_database(tmp_path / "nothing.db")
    check_database(filled_db(tmp_path / "kaizen.db"))


def test_a_corrupt_store_is_refused_with_its_path_and_the_backup_hint(tmp_path):
    db = filled_db(tmp_path / "kaizen.db")
    corrupt_inner_pages(db)
    with pytest.raises(CorruptStoreError) as e:
        check_database(db)
    assert str(db) in str(e.value) and "kaizen feedback backup" in str(e.value)


@pytest.mark.slow
def test_the_app_refuses_to_start_on_a_corrupt_store(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    db = filled_db(data / "kaizen.db")
    corrupt_inner_pages(db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    env = {**os.environ, "KAIZEN_DATA_DIR": str(data), "KAIZEN_PORT": "1"}
    r = subprocess.run([sys.executable, "-m", "cli.main", "serve"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert str(db) in r.stderr and "kaizen feedback backup" in r.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not (data / "kaizen.db-wal").exists() or (data / "kaizen.db-wal").stat().st_size == 0
