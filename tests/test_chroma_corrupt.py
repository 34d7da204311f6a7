"""A corrupt Chroma store (garbage written into a real store's SQLite file) fails at start, naming its path and
what to do: `kaizen serve` exits 2 with one error line and no traceback, before loading any model; `kaizen docs`
says the same. Each run is a fresh process: Chroma caches open stores per path within a process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_integrity import corrupt_inner_pages

ROOT = Path(__file__).resolve().parents[1]
MAKE_STORE = """
import sys
from pathlib import Path
from agent.chroma import open_local_collection
from agent.retrieval import COLLECTION
col = open_local_collection(Path(sys.argv[1]), COLLECTION, Path(sys.argv[2]))
col.add(ids=[f"d:{i}" for i in range(400)], embeddings=[[float(i % 7), 1.0, 0.5] for i in range(400)],
        documents=[f"chunk {i} " + "lorem ipsum " * 40 for i in range(400)],
        metadatas=[{"owner": "user:local", "document_id": "d", "chunk": i} for i in range(400)])
print(col.count())
"""


def run(args: list[str], data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KAIZEN_DATA_DIR": str(data), "KAIZEN_PORT": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def make_store(data: Path) -> Path:
    """A real Chroma store of 400 chunks in data/chroma, written by another process (closed when it exits)."""
    r = run(["-c", MAKE_STORE, str(data / "chroma"), str(data / "uploads")], data)
    assert r.returncode == 0 and r.stdout.strip() == "400", r.stderr[-2000:]
    return data / "chroma" / "chroma.sqlite3"


@pytest.mark.slow
def test_damaged_pages_are_refused_with_the_path_and_what_to_do(tmp_path):
    from agent.chroma import open_local_collection
    from agent.retrieval import COLLECTION
    from feedback.integrity import CorruptStoreError

    data = tmp_path / "data"
    db = make_store(data)
    corrupt_inner_pages(db)
    with pytest.raises(CorruptStoreError) as e:
        open_local_collection(data / "chroma", COLLECTION, data / "uploads")
    msg = str(e.value)
    assert str(db) in msg and "move the folder" in msg and str(data / "uploads") in msg
    assert "is damaged" in msg  # SQLite's quick_check found it (and says what), before Chroma read anything
    assert isinstance(e.value, ValueError)  # the CLI prints it in words: `kaizen: error: ...`


@pytest.mark.slow
def test_a_store_sound_to_sqlite_that_chroma_cannot_read_is_refused_in_words(tmp_path):
    """quick_check finds nothing wrong (every page is sound) but Chroma's own tables are not what it wrote: the open
    and count fail inside Chroma, and that error comes back as the same refusal, not a Rust-side traceback."""
    import sqlite3

    from agent.chroma import open_local_collection
    from agent.retrieval import COLLECTION
    from feedback.integrity import CorruptStoreError, quick_check

    data = tmp_path / "data"
    db = make_store(data)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE embeddings_queue")
    assert quick_check(db) == []
    with pytest.raises(CorruptStoreError) as e:
        open_local_collection(data / "chroma", COLLECTION, data / "uploads")
    msg = str(e.value)
    assert "cannot be opened" in msg and str(data / "chroma") in msg and "move the folder" in msg


@pytest.mark.slow
def test_a_garbage_store_stops_the_app_at_start_in_words(tmp_path):
    data = tmp_path / "data"
    db = make_store(data)
    r = run(["-m", "cli.main", "docs", "list"], data)
    assert r.returncode == 0, r.stderr[-2000:]  # sound: it opens
    db.write_bytes(os.urandom(db.stat().st_size))
    r = run(["-m", "cli.main", "docs", "list"], data)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert str(data / "chroma") in r.stderr and "move the folder" in r.stderr
    r = run(["-m", "cli.main", "serve"], data)
    assert r.returncode == 2, r.stderr[-3000:]
    assert str(data / "chroma") in r.stderr and "upload the documents again" in r.stderr
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "answering with" not in r.stderr  # refused before any model was loaded
