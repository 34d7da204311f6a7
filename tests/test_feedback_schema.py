"""The exact schema of a blank feedback database, and migrations that fail leave everything unchanged."""
from __future__ import annotations

import sqlite3

import pytest
from sqlite_utils import Database

from feedback import migrations
from feedback.migrations import MIGRATIONS, MigrationError
from feedback.store import Store

EXPECTED_TABLES = {
    # sqlite-utils' Migrations record (set "kaizen"): one row per applied migration
    "_sqlite_migrations": 'CREATE TABLE "_sqlite_migrations" (\n   "id" INTEGER PRIMARY KEY,\n   "migration_set" TEXT,\n'
                          '   "name" TEXT,\n   "applied_at" TEXT\n)',
    "users": """CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    opted_out INTEGER NOT NULL DEFAULT 0 CHECK (opted_out IN (0, 1)),
    created TEXT NOT NULL
)""",
    "opt_outs": """CREATE TABLE opt_outs (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    opted_out INTEGER NOT NULL CHECK (opted_out IN (0, 1)),
    created TEXT NOT NULL
)""",
    "conversations": """CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    title TEXT,
    created TEXT NOT NULL
)""",
    "messages": """CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    parent_id INTEGER REFERENCES messages(id),
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL,
    template TEXT,
    model TEXT,
    adapter TEXT,
    sources TEXT,
    latency_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created TEXT NOT NULL
, decoding TEXT, stopped INTEGER, context_messages INTEGER)""",  # m005: how the answer was decoded (JSON);
    # m007: stopped by the user; m008: how many earlier messages the model was given
    "ratings": """CREATE TABLE ratings (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    value INTEGER NOT NULL CHECK (value IN (-1, 0, 1)),
    reasons TEXT NOT NULL DEFAULT '[]',
    comment TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
)""",
    "edits": """CREATE TABLE edits (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    original TEXT NOT NULL,
    edited TEXT NOT NULL,
    created TEXT NOT NULL
)""",
    "choices": """CREATE TABLE choices (
    id INTEGER PRIMARY KEY,
    prompt_message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    candidates TEXT NOT NULL,
    picked_id INTEGER NOT NULL REFERENCES messages(id),
    created TEXT NOT NULL
)""",
    # m003_api: the OpenAI-compatible API (web/api.py)
    "api_keys": """CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created TEXT NOT NULL,
    revoked TEXT
)""",
    "api_completions": """CREATE TABLE api_completions (
    id TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    created TEXT NOT NULL
)""",
    "api_threads": """CREATE TABLE api_threads (
    user_id INTEGER NOT NULL REFERENCES users(id),
    thread_key TEXT NOT NULL,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    created TEXT NOT NULL,
    PRIMARY KEY (user_id, thread_key)
)""",
    # m004_conversation_changes: the history sidebar's renames and deletes (append-only; the latest wins)
    "conversation_changes": """CREATE TABLE conversation_changes (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    action TEXT NOT NULL CHECK (action IN ('rename', 'hide')),
    title TEXT,
    created TEXT NOT NULL
)""",
    "undos": """CREATE TABLE undos (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    created TEXT NOT NULL
)""",
}
EXPECTED_INDEXES = {
    "idx_api_completions_message": "CREATE INDEX idx_api_completions_message ON api_completions(message_id)",
    "idx_api_keys_user": "CREATE INDEX idx_api_keys_user ON api_keys(user_id)",
    "sqlite_autoindex_api_completions_1": None,  # PRIMARY KEY on api_completions.id
    "sqlite_autoindex_api_keys_1": None,  # UNIQUE api_keys.key_hash
    "sqlite_autoindex_api_threads_1": None,  # PRIMARY KEY (user_id, thread_key)
    "idx_choices_created": "CREATE INDEX idx_choices_created ON choices(created)",
    "idx_choices_prompt": "CREATE INDEX idx_choices_prompt ON choices(prompt_message_id, user_id)",
    "idx_conversation_changes": "CREATE INDEX idx_conversation_changes ON conversation_changes(conversation_id, action)",
    "idx_undos_message": "CREATE INDEX idx_undos_message ON undos(message_id)",
    "idx_conversations_user": "CREATE INDEX idx_conversations_user ON conversations(user_id)",
    "idx_edits_created": "CREATE INDEX idx_edits_created ON edits(created)",
    "idx_edits_message": "CREATE INDEX idx_edits_message ON edits(message_id, user_id)",
    "idx_messages_conversation": "CREATE INDEX idx_messages_conversation ON messages(conversation_id)",
    "idx_messages_parent": "CREATE INDEX idx_messages_parent ON messages(parent_id)",
    "idx_ratings_created": "CREATE INDEX idx_ratings_created ON ratings(created)",
    "idx_ratings_message": "CREATE INDEX idx_ratings_message ON ratings(message_id, user_id)",
    "idx__sqlite_migrations_migration_set_name": 'CREATE UNIQUE INDEX "idx__sqlite_migrations_migration_set_name"\n'
                                                 '    ON "_sqlite_migrations" ("migration_set", "name")',
    "sqlite_autoindex_users_1": None,  # UNIQUE users.name
}
EXPECTED_TRIGGERS = {
    f"{t}_append_only": f"CREATE TRIGGER {t}_append_only BEFORE UPDATE ON {t}\n"
                        f"BEGIN SELECT RAISE(ABORT, '{t} are append-only'); END"
    for t in ("choices", "edits", "messages", "opt_outs", "ratings", "api_completions", "conversation_changes", "undos")
}


def schema(path) -> dict:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    out: dict = {"table": {}, "index": {}, "trigger": {}, "view": {}}
    for kind, name, sql in rows:
        out[kind][name] = sql
    return out


def snapshot(path) -> dict:
    """Schema plus every row of every table."""
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}
    return {"schema": schema(path), "rows": rows}


def test_blank_database_has_exactly_this_schema(tmp_path):
    path = tmp_path / "deep" / "dir" / "kaizen.db"
    Store(path).close()
    got = schema(path)
    assert got["table"] == EXPECTED_TABLES
    assert got["index"] == EXPECTED_INDEXES
    assert got["trigger"] == EXPECTED_TRIGGERS
    assert got["view"] == {}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT migration_set, name FROM _sqlite_migrations ORDER BY id").fetchall() == [
            ("kaizen", n) for n in
            ("m001_initial", "m002_rating_retraction", "m003_api", "m004_conversation_changes",
                          "m005_answer_decoding", "m006_undos", "m007_stopped_answers",
                          "m008_context_messages")]
        assert all(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0
                   for t in EXPECTED_TABLES if t != "_sqlite_migrations")


def test_reopening_applies_nothing_twice(tmp_path):
    path = tmp_path / "kaizen.db"
    Store(path).close()
    before = snapshot(path)
    Store(path).close()
    assert snapshot(path) == before


def _open(path) -> Database:
    return Database(sqlite3.connect(path, isolation_level=None))


def test_failing_migration_leaves_database_unchanged(tmp_path):
    path = tmp_path / "kaizen.db"
    store = Store(path)
    uid = store.ensure_user("alice")
    conv = store.new_conversation(uid, "kept")
    store.add_message(conv, "user", "hello", user_id=uid)
    store.close()
    before = snapshot(path)

    def m900_broken(db):
        db.execute("CREATE TABLE extra (a TEXT)")
        db.execute("ALTER TABLE users ADD COLUMN email TEXT")
        db.execute("INSERT INTO users (name, role, created) VALUES ('mallory', 'admin', 'now')")
        db.execute("DELETE FROM messages")
        raise RuntimeError("boom")

    db = _open(path)
    with pytest.raises(MigrationError, match="m900_broken.*boom"):
        migrations.apply(db, MIGRATIONS + [m900_broken])
    db.close()
    assert snapshot(path) == before
    # The store still opens and works; a correct m002 applies afterwards and is recorded.

    def m900_fixed(db):
        db.execute("CREATE TABLE extra (a TEXT)")

    db = _open(path)
    assert migrations.apply(db, MIGRATIONS + [m900_fixed]) == ["m900_fixed"]
    assert migrations.applied(db) == [m.__name__ for m in MIGRATIONS] + ["m900_fixed"]
    assert migrations.apply(db, MIGRATIONS + [m900_fixed]) == []
    db.close()


def test_a_database_of_the_old_runner_opens_with_nothing_run_again(tmp_path):
    """Files made before sqlite-utils' Migrations recorded their migrations in `_migrations(name, applied_at)`:
    opening one moves those records (their times kept) and runs none of the migrations again."""
    path = tmp_path / "old.db"
    store = Store(path)
    uid = store.ensure_user("alice")
    store.add_message(store.new_conversation(uid, "kept"), "user", "hello", user_id=uid)
    store.close()
    with sqlite3.connect(path) as conn:  # the old runner's record, as it wrote it
        conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        conn.executemany("INSERT INTO _migrations VALUES (?, ?)",
                         [(m.__name__, f"2026-01-0{i}T00:00:00.000000+00:00") for i, m in enumerate(MIGRATIONS, 1)])
        conn.execute("DROP TABLE _sqlite_migrations")
    rows_before = {t: r for t, r in snapshot(path)["rows"].items() if "migrations" not in t}
    Store(path).close()
    after = snapshot(path)
    assert "_migrations" not in after["schema"]["table"]
    assert after["schema"]["table"] == EXPECTED_TABLES
    assert {t: r for t, r in after["rows"].items() if "migrations" not in t} == rows_before
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name, applied_at FROM _sqlite_migrations ORDER BY id").fetchall() == [
            (m.__name__, f"2026-01-0{i}T00:00:00.000000+00:00") for i, m in enumerate(MIGRATIONS, 1)]


def test_failing_first_migration_leaves_blank_file_blank(tmp_path):
    path = tmp_path / "blank.db"

    def m001_broken(db):
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        raise ValueError("no")

    db = _open(path)
    with pytest.raises(MigrationError):
        migrations.apply(db, [m001_broken])
    db.close()
    assert snapshot(path) == {"schema": {"table": {}, "index": {}, "trigger": {}, "view": {}}, "rows": {}}


def test_events_and_messages_cannot_be_updated_in_place(tmp_path):
    path = tmp_path / "kaizen.db"
    store = Store(path)
    uid = store.ensure_user("alice")
    conv = store.new_conversation(uid)
    q = store.add_message(conv, "user", "q", user_id=uid)
    a = store.add_message(conv, "assistant", "a", user_id=uid)
    store.rate(a, uid, 1)
    store.close()
    with sqlite3.connect(path) as conn:
        for sql in ("UPDATE ratings SET value = -1", "UPDATE messages SET content = 'forged'",
                    f"UPDATE messages SET parent_id = NULL WHERE id = {a}"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
        assert conn.execute("SELECT value FROM ratings").fetchall() == [(1,)]
        assert conn.execute("SELECT content FROM messages ORDER BY id").fetchall() == [("q",), ("a",)]
    assert q < a


def test_retraction_migration_keeps_every_existing_rating(tmp_path):
    """A database made before retractions (m001 only, ratings of +1/-1) opens with every row, id and timestamp
    kept; afterwards a 0 (a taken-back thumb) is accepted, other values are still refused, and updates still are."""
    path = tmp_path / "old.db"
    db = _open(path)
    migrations.apply(db, [migrations.m001_initial])
    db.execute("INSERT INTO users (id, name, created) VALUES (1, 'alice', 't0')")
    db.execute("INSERT INTO conversations (id, user_id, created) VALUES (1, 1, 't0')")
    db.execute("INSERT INTO messages (id, conversation_id, role, content, created) VALUES (1, 1, 'user', 'q', 't0')")
    db.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, created) "
               "VALUES (2, 1, 1, 'assistant', 'a', 't1')")
    db.execute("INSERT INTO ratings (id, message_id, user_id, value, reasons, comment, created) "
               "VALUES (7, 2, 1, -1, '[\"wrong\"]', 'no', 't2'), (9, 2, 1, 1, '[]', '', 't3')")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO ratings (message_id, user_id, value, created) VALUES (2, 1, 0, 't4')")
    db.close()
    before = snapshot(path)["rows"]["ratings"]
    store = Store(path)
    assert snapshot(path)["rows"]["ratings"] == before == [(7, 2, 1, -1, '["wrong"]', "no", "t2"),
                                                           (9, 2, 1, 1, "[]", "", "t3")]
    assert schema(path)["table"]["ratings"] == EXPECTED_TABLES["ratings"]
    assert {k: v for k, v in schema(path)["index"].items() if "ratings" in k} == {
        k: v for k, v in EXPECTED_INDEXES.items() if "ratings" in k}
    assert schema(path)["trigger"]["ratings_append_only"] == EXPECTED_TRIGGERS["ratings_append_only"]
    rid = store.retract(2, 1)
    assert store.message(2, 1)["rating"] is None
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM ratings WHERE id = ?", (rid,)).fetchone() == (0,)
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO ratings (message_id, user_id, value, created) VALUES (2, 1, 2, 't5')")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE ratings SET value = 1 WHERE id = 7")
