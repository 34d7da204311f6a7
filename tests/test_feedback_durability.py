"""Durability (SIGKILL mid-write) and concurrency (8 writers, threads and processes) on a real SQLite file."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from feedback.store import Store

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
WRITE_SECONDS = float(os.environ.get("KAIZEN_TEST_WRITE_SECONDS", "10"))


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


# --- durability ------------------------------------------------------------------------------------------------
def acking_writer(path: str, user_id: int, conversation_id: int, question_id: int) -> None:
    """Write forever; print `<table> <id>` only after each write has committed."""
    store = Store(path)
    i = 0
    while True:
        i += 1
        a = store.add_message(conversation_id, "assistant", f"answer {i}", user_id=user_id, parent_id=question_id)
        print(f"messages {a}", flush=True)
        print(f"ratings {store.rate(a, user_id, 1 if i % 2 else -1, ['other'], f'comment {i}')}", flush=True)
        print(f"edits {store.edit(a, user_id, f'edited answer {i}')}", flush=True)


@pytest.mark.slow
def test_acknowledged_events_survive_sigkill(tmp_path):
    path = tmp_path / "kaizen.db"
    store = Store(path)
    uid = store.ensure_user("alice")
    conv = store.new_conversation(uid)
    q = store.add_message(conv, "user", "question", user_id=uid)
    store.close()
    acked: dict[str, set[int]] = {"messages": set(), "ratings": set(), "edits": set()}
    for round_, min_lines in enumerate((150, 400, 90)):  # kill at different points, reopening each time
        proc = _python("import sys; from test_feedback_durability import acking_writer; "
                       "acking_writer(sys.argv[1], *map(int, sys.argv[2:]))", path, uid, conv, q)
        lines = 0
        deadline = time.monotonic() + 60
        while lines < min_lines and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            table, _, rid = line.strip().partition(" ")
            acked[table].add(int(rid))
            lines += 1
        os.kill(proc.pid, signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        assert lines >= min_lines, f"round {round_}: writer produced only {lines} acks; stderr: {err}"
        for line in rest.splitlines(keepends=True):
            if line.endswith("\n"):  # a complete ack
                table, _, rid = line.strip().partition(" ")
                acked[table].add(int(rid))
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            for table, ids in acked.items():
                present = {r[0] for r in conn.execute(f"SELECT id FROM {table}")}
                assert ids <= present, f"round {round_}: {len(ids - present)} acknowledged {table} lost"
    reopened = Store(path)
    assert reopened.event_count() >= len(acked["ratings"]) + len(acked["edits"]) >= 400
    assert len(reopened.conversation(conv, uid)) >= len(acked["messages"]) + 1
    reopened.close()


# --- concurrency -----------------------------------------------------------------------------------------------
def timed_writer(path: str, name: str, seconds: float) -> dict:
    """Own user, chat and question; add and rate answers until the time is up. Errors are collected, not raised."""
    store = Store(path)
    out = {"name": name, "messages": [], "ratings": [], "errors": []}
    try:
        uid = store.ensure_user(name)
        conv = store.new_conversation(uid, name)
        q = store.add_message(conv, "user", f"question from {name}", user_id=uid)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                a = store.add_message(conv, "assistant", f"answer {len(out['messages'])}", user_id=uid,
                                      parent_id=q, adapter=name)
                out["messages"].append(a)
                out["ratings"].append(store.rate(a, uid, 1, [], "ok"))
            except Exception as e:  # noqa: BLE001 - the test asserts there are none
                out["errors"].append(repr(e))
    finally:
        store.close()
    return out


def process_writer(path: str, threads: int, seconds: float) -> None:
    results = [None] * threads

    def run(i):
        results[i] = timed_writer(path, f"proc{os.getpid()}-t{i}", seconds)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(json.dumps(results))


@pytest.mark.slow
def test_eight_concurrent_writers_lose_nothing_and_never_lock(tmp_path):
    """2 processes x 2 threads + 4 threads here = 8 writers for WRITE_SECONDS."""
    path = tmp_path / "kaizen.db"
    Store(path).close()
    procs = [_python("import sys; from test_feedback_durability import process_writer; "
                     "process_writer(sys.argv[1], 2, float(sys.argv[2]))", path, WRITE_SECONDS) for _ in range(2)]
    local: list[dict] = []
    threads = [threading.Thread(target=lambda i=i: local.append(timed_writer(str(path), f"local-{i}", WRITE_SECONDS)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = list(local)
    for p in procs:
        out, err = p.communicate(timeout=WRITE_SECONDS + 60)
        assert p.returncode == 0, err
        results += json.loads(out)
    assert len(results) == 8
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[:5]
    assert all(len(r["ratings"]) > 0 for r in results)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ratings = {r[0] for r in conn.execute("SELECT id FROM ratings")}
        answers = {r[0] for r in conn.execute("SELECT id FROM messages WHERE role = 'assistant'")}
        per_adapter = dict(conn.execute("SELECT adapter, count(*) FROM messages WHERE role = 'assistant' "
                                        "GROUP BY adapter").fetchall())
    assert ratings == {i for r in results for i in r["ratings"]}
    assert answers == {i for r in results for i in r["messages"]}
    assert per_adapter == {r["name"]: len(r["messages"]) for r in results}


def test_threads_share_one_store(tmp_path):
    """The Gradio path: one Store, many worker threads, each with its own connection."""
    store = Store(tmp_path / "kaizen.db")
    uid = store.ensure_user("alice")
    conv = store.new_conversation(uid)
    q = store.add_message(conv, "user", "q", user_id=uid)
    ids: list[int] = []
    lock = threading.Lock()

    def work():
        for _ in range(25):
            a = store.add_message(conv, "assistant", "a", user_id=uid, parent_id=q)
            r = store.rate(a, uid, -1, ["wrong"])
            with lock:
                ids.append(r)

    pool = [threading.Thread(target=work) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(ids) == len(set(ids)) == 200
    assert store.event_count() == 200 and len(store.conversation(conv, uid)) == 201
    store.close()
