"""Schema migrations: a growing list of plain functions `mNNN_name(db)` (sqlite-utils `Database`), run by
sqlite-utils' own `Migrations` (set "kaizen", recorded in `_sqlite_migrations`).

`apply(db)` runs the pending ones in one transaction with their records (nested ones as savepoints): a migration
that raises rolls all of them back, so the database is left exactly as it was (a blank file stays blank), and the
error is re-raised as `MigrationError` naming it. Never edit or reorder a released migration; append a new one.
The Store applies them under its cross-process write lock, so two processes opening a fresh file at once are safe.
Databases made before this used a table of their own, `_migrations`; `apply` moves its records over first.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from sqlite_utils import Database, Migrations

SET = "kaizen"
LEGACY_TABLE = "_migrations"  # the hand-written runner's record (name, applied_at), moved into Migrations' table


class MigrationError(RuntimeError):
    """A migration failed; it was rolled back and nothing changed."""


def m001_initial(db: Database) -> None:
    """Users, conversations, messages and the append-only event tables."""
    statements = [
        """CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    opted_out INTEGER NOT NULL DEFAULT 0 CHECK (opted_out IN (0, 1)),
    created TEXT NOT NULL
)""",
        """CREATE TABLE opt_outs (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    opted_out INTEGER NOT NULL CHECK (opted_out IN (0, 1)),
    created TEXT NOT NULL
)""",
        """CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    title TEXT,
    created TEXT NOT NULL
)""",
        """CREATE TABLE messages (
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
)""",
        """CREATE TABLE ratings (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    value INTEGER NOT NULL CHECK (value IN (-1, 1)),
    reasons TEXT NOT NULL DEFAULT '[]',
    comment TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
)""",
        """CREATE TABLE edits (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    original TEXT NOT NULL,
    edited TEXT NOT NULL,
    created TEXT NOT NULL
)""",
        """CREATE TABLE choices (
    id INTEGER PRIMARY KEY,
    prompt_message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    candidates TEXT NOT NULL,
    picked_id INTEGER NOT NULL REFERENCES messages(id),
    created TEXT NOT NULL
)""",
        "CREATE INDEX idx_conversations_user ON conversations(user_id)",
        "CREATE INDEX idx_messages_conversation ON messages(conversation_id)",
        "CREATE INDEX idx_messages_parent ON messages(parent_id)",
        "CREATE INDEX idx_ratings_message ON ratings(message_id, user_id)",
        "CREATE INDEX idx_ratings_created ON ratings(created)",
        "CREATE INDEX idx_edits_message ON edits(message_id, user_id)",
        "CREATE INDEX idx_edits_created ON edits(created)",
        "CREATE INDEX idx_choices_prompt ON choices(prompt_message_id, user_id)",
        "CREATE INDEX idx_choices_created ON choices(created)",
    ]
    # Messages and events are immutable: a trigger refuses any UPDATE (a later event supersedes an earlier one).
    for table in ("messages", "opt_outs", "ratings", "edits", "choices"):
        statements.append(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE ON {table}\n"
            f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END"
        )
    for sql in statements:
        db.execute(sql)


RATINGS_V2 = """CREATE TABLE ratings (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    value INTEGER NOT NULL CHECK (value IN (-1, 0, 1)),
    reasons TEXT NOT NULL DEFAULT '[]',
    comment TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
)"""


def m002_rating_retraction(db: Database) -> None:
    """A rating of 0 is a retraction: the user un-clicked their thumb (the latest rating per message and user
    wins, so a 0 leaves that answer unrated). SQLite cannot change a CHECK in place: the table is rebuilt under
    its own name with every row, id and timestamp kept, then its indexes and append-only trigger are restored."""
    db.execute("ALTER TABLE ratings RENAME TO ratings_v1")
    db.execute(RATINGS_V2)
    db.execute("INSERT INTO ratings (id, message_id, user_id, value, reasons, comment, created) "
               "SELECT id, message_id, user_id, value, reasons, comment, created FROM ratings_v1 ORDER BY id")
    db.execute("DROP TABLE ratings_v1")  # takes its indexes and trigger with it
    for sql in ("CREATE INDEX idx_ratings_message ON ratings(message_id, user_id)",
                "CREATE INDEX idx_ratings_created ON ratings(created)",
                "CREATE TRIGGER ratings_append_only BEFORE UPDATE ON ratings\n"
                "BEGIN SELECT RAISE(ABORT, 'ratings are append-only'); END"):
        db.execute(sql)


def m003_api(db: Database) -> None:
    """The OpenAI-compatible API (web/api.py): API keys (sha256 of the key; the key itself is shown once and
    never stored), the completion ids it hands out (each names one stored assistant message of one user), and the
    threads that map a client's resent history to one stored conversation."""
    for sql in (
        """CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created TEXT NOT NULL,
    revoked TEXT
)""",
        """CREATE TABLE api_completions (
    id TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    created TEXT NOT NULL
)""",
        """CREATE TABLE api_threads (
    user_id INTEGER NOT NULL REFERENCES users(id),
    thread_key TEXT NOT NULL,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    created TEXT NOT NULL,
    PRIMARY KEY (user_id, thread_key)
)""",
        "CREATE INDEX idx_api_keys_user ON api_keys(user_id)",
        "CREATE INDEX idx_api_completions_message ON api_completions(message_id)",
        "CREATE TRIGGER api_completions_append_only BEFORE UPDATE ON api_completions\n"
        "BEGIN SELECT RAISE(ABORT, 'api_completions are append-only'); END",
    ):
        db.execute(sql)


def m004_conversation_changes(db: Database) -> None:
    """The history sidebar: a user renames or deletes (hides) a conversation. Append-only, like every event: the
    latest change per conversation wins; a hidden conversation leaves the list but its messages and feedback stay
    on record (for training, unless the user opts out)."""
    for sql in (
        """CREATE TABLE conversation_changes (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    action TEXT NOT NULL CHECK (action IN ('rename', 'hide')),
    title TEXT,
    created TEXT NOT NULL
)""",
        "CREATE INDEX idx_conversation_changes ON conversation_changes(conversation_id, action)",
        "CREATE TRIGGER conversation_changes_append_only BEFORE UPDATE ON conversation_changes\n"
        "BEGIN SELECT RAISE(ABORT, 'conversation_changes are append-only'); END",
    ):
        db.execute(sql)


def m005_answer_decoding(db: Database) -> None:
    """How each answer was decoded (JSON: temperature, top_p, seed, max_new_tokens): a per-chat temperature or a
    retry's sampling is part of the answer's provenance, as its template and adapter are."""
    db.execute("ALTER TABLE messages ADD COLUMN decoding TEXT")


def m006_undos(db: Database) -> None:
    """↶ undo in the chat: the user took a question (and what followed it) off the screen. Append-only; the messages
    stay on record, and a reopened conversation leaves the undone turn out, as the user last saw it."""
    for sql in (
        """CREATE TABLE undos (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    created TEXT NOT NULL
)""",
        "CREATE INDEX idx_undos_message ON undos(message_id)",
        "CREATE TRIGGER undos_append_only BEFORE UPDATE ON undos\n"
        "BEGIN SELECT RAISE(ABORT, 'undos are append-only'); END",
    ):
        db.execute(sql)


def m007_stopped_answers(db: Database) -> None:
    """An answer the user stopped before its end (Stop in the chat, a client that went away): 1; NULL otherwise.
    Its text is a fragment: the datasets never take it as a gold answer (feedback/datasets.py `endorses_stopped`)."""
    db.execute("ALTER TABLE messages ADD COLUMN stopped INTEGER")


def m008_context_messages(db: Database) -> None:
    """How many earlier messages of its conversation the model was given with an answer's question (0: it was
    answered as a new subject, agent/routing.py `keeps_history`); NULL where not recorded (older rows)."""
    db.execute("ALTER TABLE messages ADD COLUMN context_messages INTEGER")


MIGRATIONS: list[Callable[[Database], None]] = [m001_initial, m002_rating_retraction, m003_api,
                                                 m004_conversation_changes, m005_answer_decoding, m006_undos,
                                                 m007_stopped_answers, m008_context_messages]


def migration_set(functions: Sequence[Callable[[Database], None]] = MIGRATIONS) -> Migrations:
    """sqlite-utils' Migrations over `functions`, in order, each named by its function; a failure inside one
    raises MigrationError naming it."""
    names = [fn.__name__ for fn in functions]
    if len(set(names)) != len(names):
        raise MigrationError(f"duplicate migration names: {names}")
    out = Migrations(SET)
    for fn in functions:
        out(name=fn.__name__)(_named_failure(fn))
    return out


def _named_failure(fn: Callable[[Database], None]) -> Callable[[Database], None]:
    @functools.wraps(fn)
    def run(db: Database) -> None:
        try:
            fn(db)
        except MigrationError:
            raise
        except Exception as e:
            raise MigrationError(f"migration {fn.__name__} failed and was rolled back: {e}") from e
    return run


def applied(db: Database) -> list[str]:
    """Names of the applied migrations, in order."""
    return [m.name for m in Migrations(SET).applied(db)]


def apply(db: Database, functions: Sequence[Callable[[Database], None]] = MIGRATIONS) -> list[str]:
    """Apply pending migrations, all in one transaction. Returns the names applied now.

    `db.conn` must be in driver autocommit mode (`isolation_level=None`) so that BEGIN/COMMIT are sqlite-utils'.
    """
    migrations = migration_set(functions)
    if db.conn.isolation_level is not None:
        raise MigrationError("apply() needs a connection with isolation_level=None")
    with db.atomic():
        _adopt_legacy(db, migrations)
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
    return pending


def _adopt_legacy(db: Database, migrations: Migrations) -> None:
    """Move the records of the hand-written runner's `_migrations` table (name, applied_at) into sqlite-utils'
    table, keeping their times, and drop it: those migrations are applied and are not run again."""
    if not db[LEGACY_TABLE].exists():
        return
    migrations.ensure_migrations_table(db)
    db.execute(f"INSERT OR IGNORE INTO {Migrations.migrations_table} (migration_set, name, applied_at) "
               f"SELECT ?, name, applied_at FROM {LEGACY_TABLE} ORDER BY rowid", [SET])
    db.execute(f"DROP TABLE {LEGACY_TABLE}")
