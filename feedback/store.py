"""The feedback store: users, conversations, messages and append-only feedback events in one SQLite file.

Concurrency (chosen design): one SQLite connection per thread (WAL: readers never block) and, for writes, a
write lock held around each `BEGIN IMMEDIATE ... COMMIT`: a `threading.Lock` shared by every `Store` on the same
file in this process plus an `filelock on `<db>.lock` between processes (feedback.locking; create Stores after a
fork, not before). Writers therefore queue instead of spinning
in SQLite's busy handler (whose 100 ms sleeps starve writers and blow up tail latency); `busy_timeout=5000` still
covers writers that do not take the lock (e.g. the `sqlite-utils` CLI). Safe to call from Gradio worker threads.

Durability: WAL with `synchronous=NORMAL` (default) keeps every committed event across a crash or SIGKILL of the
app; pass `synchronous="FULL"` to also survive power loss (costs an fsync per write, ~0.2-5 ms here).
Checkpoints (which fsync) run in a background thread, off the request path; writers only checkpoint themselves
when the WAL passes WAL_AUTOCHECKPOINT_PAGES under sustained load, which keeps the WAL bounded.

Server-side truth: every write re-checks in the same transaction that the message or conversation belongs to the
calling user; foreign ids, other users' ids and wrong roles all give `NotFoundError`/`FeedbackError` and write
nothing. Text is stored verbatim (HTML is not stripped; escaping is the UI's job).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database

from agent.files import now_iso
from feedback import migrations
from feedback.checks import (MAX_META_CHARS, STORE_FULL, FeedbackError, NotFoundError,  # noqa: F401 (re-exported)
                             StoreFullError, check_decoding, check_id, check_text, is_disk_full, json_default, normalize_since,
                             optional_count, optional_number, optional_text)
from feedback.curate import normalize_text
from feedback.locking import Checkpointer, lock_for

REASONS = ("wrong", "unhelpful", "unsafe", "too long", "ignored the sources", "other")
USER_ROLES = ("user", "admin")
MESSAGE_ROLES = ("system", "user", "assistant")
MAX_NAME_CHARS = 100
MAX_SOURCES_CHARS = 200_000
WAL_AUTOCHECKPOINT_PAGES = 8000  # ~32 MB: the in-line checkpoint is only a bound; see feedback.locking.Checkpointer


log = logging.getLogger("kaizen.store")


_OWNED_ANSWER = ("SELECT 1 FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                 "WHERE m.id = ? AND c.user_id = ? AND m.role = 'assistant'")


# A conversation its owner deleted from their list (append-only `conversation_changes`); {} is its id's SQL
_HIDDEN = "EXISTS (SELECT 1 FROM conversation_changes WHERE conversation_id = {} AND action = 'hide')"


class Store:
    """Feedback store over a SQLite file. See the module docstring for the concurrency design."""

    def __init__(self, path: str | Path, *, max_user_chars: int = 4000, max_answer_chars: int = 8000,
                 max_comment_chars: int = 2000, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000,
                 max_db_mb: float = 0):
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise FeedbackError(f"synchronous must be NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_user_chars = max_user_chars
        self.max_answer_chars = max_answer_chars
        self.max_comment_chars = max_comment_chars
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        self.max_db_mb = max_db_mb  # > 0: SQLite's max_page_count, so the file stops growing there (as a full disk)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_guard = threading.Lock()
        self._lock = lock_for(self.path, busy_timeout_ms / 1000)
        conn = self._conn()
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise FeedbackError(f"{self.path}: could not switch to WAL journal mode")
        with self._full_in_words(), self._lock.hold():
            migrations.apply(self.db)
        self._checkpointer = Checkpointer(self)
        self._checkpointer.start()

    @classmethod
    def from_settings(cls, settings, **kwargs) -> "Store":
        """The Store at `settings.db_path` with the length limits of `settings` (max_input_chars, max_edit_chars)."""
        kwargs.setdefault("max_db_mb", getattr(settings, "max_db_mb", 0))
        return cls(settings.db_path, max_user_chars=settings.max_input_chars,
                   max_answer_chars=settings.max_edit_chars, **kwargs)

    # --- connections ----------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            if self.max_db_mb and self.max_db_mb > 0:
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count={max(1, int(self.max_db_mb * 1048576 // page))}")
            self._local.conn = conn
            self._local.db = Database(conn)
            with self._conns_guard:
                self._conns.append(conn)
        return conn

    @property
    def db(self) -> Database:
        """This thread's sqlite-utils `Database` (read freely; write only through Store methods)."""
        self._conn()
        return self._local.db

    def close(self) -> None:
        """Close every connection this Store opened (all threads)."""
        checkpointer = getattr(self, "_checkpointer", None)
        if checkpointer is not None:
            checkpointer.stopped.set()
            checkpointer.join(timeout=5)
        with self._conns_guard:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    @contextmanager
    def _full_in_words(self) -> Iterator[None]:
        """A full disk becomes StoreFullError (a sentence for the user) and one log line for the operator."""
        try:
            yield
        except (sqlite3.Error, OSError) as e:
            if not is_disk_full(e):
                raise
            cap = f" or its {self.max_db_mb:g} MB cap (KAIZEN_MAX_DB_MB)" if self.max_db_mb else ""
            log.error("feedback store %s: the disk is full%s (%s): a write was refused and nothing of it saved; "
                      "free space on that disk", self.path, cap, e)
            raise StoreFullError(STORE_FULL) from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._full_in_words(), self._lock.hold():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
                self._checkpointer.dirty = True
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, params: Sequence = ()) -> list[dict]:
        """Rows as dicts (sqlite-utils' db.query) on this thread's connection, inside its write transaction if one
        is open (`_write` yields the same connection)."""
        return list(self.db.query(sql, params))

    def _one(self, sql: str, params: Sequence = ()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    # --- users ----------------------------------------------------------------------------------------------
    def ensure_user(self, name: str, role: str | None = None) -> int:
        """The id of user `name`, created (role `role` or "user") if missing. An existing user's role changes only
        when `role` is given: pass the role from the users file (feedback.auth.role_of) to keep them in sync."""
        name = check_text(name, "user name", MAX_NAME_CHARS).strip()
        if role is not None and role not in USER_ROLES:
            raise FeedbackError(f"role must be one of {USER_ROLES}, got {role!r}")
        row = self._one("SELECT id, role FROM users WHERE name = ?", (name,))
        if row and role in (None, row["role"]):
            return row["id"]
        with self._write() as conn:
            row = self._one("SELECT id, role FROM users WHERE name = ?", (name,))
            if row is None:
                return conn.execute("INSERT INTO users (name, role, opted_out, created) VALUES (?, ?, 0, ?)",
                                    (name, role or "user", now_iso())).lastrowid
            if role is not None and row["role"] != role:
                conn.execute("UPDATE users SET role = ? WHERE id = ?", (role, row["id"]))
            return row["id"]

    def user(self, user_id: int) -> dict:
        row = self._one("SELECT * FROM users WHERE id = ?", (check_id(user_id, "user_id"),))
        if row is None:
            raise NotFoundError(f"user {user_id} not found")
        row["opted_out"] = bool(row["opted_out"])
        return row

    def find_user(self, name: str) -> dict | None:
        row = self._one("SELECT * FROM users WHERE name = ?", (str(name).strip(),))
        if row:
            row["opted_out"] = bool(row["opted_out"])
        return row

    def set_opt_out(self, user_id: int, opted_out: bool) -> None:
        """Opt a user out of (or back into) training use; every change is also logged in `opt_outs`."""
        if not isinstance(opted_out, bool):
            raise FeedbackError(f"opted_out must be True or False, got {opted_out!r}")
        check_id(user_id, "user_id")
        with self._write() as conn:
            if conn.execute("UPDATE users SET opted_out = ? WHERE id = ?", (int(opted_out), user_id)).rowcount != 1:
                raise NotFoundError(f"user {user_id} not found")
            conn.execute("INSERT INTO opt_outs (user_id, opted_out, created) VALUES (?, ?, ?)",
                         (user_id, int(opted_out), now_iso()))

    # --- conversations and messages -------------------------------------------------------------------------
    def new_conversation(self, user_id: int, title: str | None = None) -> int:
        check_id(user_id, "user_id")
        title = optional_text(title, "title")
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone():
                raise NotFoundError(f"user {user_id} not found")
            return conn.execute("INSERT INTO conversations (user_id, title, created) VALUES (?, ?, ?)",
                                (user_id, title, now_iso())).lastrowid

    def _owned_conversation(self, conn, conversation_id, user_id) -> None:
        check_id(conversation_id, "conversation_id")
        check_id(user_id, "user_id")
        if not conn.execute("SELECT 1 FROM conversations WHERE id = ? AND user_id = ?",
                            (conversation_id, user_id)).fetchone():
            raise NotFoundError(f"conversation {conversation_id} not found")

    def _owned_message(self, conn, message_id, user_id, role: str | None = None) -> dict:
        check_id(message_id, "message_id")
        check_id(user_id, "user_id")
        row = self._one("SELECT m.* FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                        "WHERE m.id = ? AND c.user_id = ?", (message_id, user_id))
        if row is None:
            raise NotFoundError(f"message {message_id} not found")
        if role and row["role"] != role:
            raise FeedbackError(f"message {message_id} is a {row['role']} message, not an {role} message"
                                if role == "assistant" else
                                f"message {message_id} is a {row['role']} message, not a {role} message")
        return row

    def _default_parent(self, conn, conversation_id: int, role: str, user_id: int) -> int | None:
        if role == "assistant":
            row = conn.execute("SELECT max(id) FROM messages WHERE conversation_id = ? AND role = 'user'",
                               (conversation_id,)).fetchone()
            if row[0] is None:
                raise FeedbackError("an assistant message needs a user message to reply to")
            return row[0]
        last = self._one("SELECT id, role, parent_id FROM messages WHERE conversation_id = ? AND role != 'system' "
                         "ORDER BY id DESC LIMIT 1", (conversation_id,))
        if last is None or last["role"] == "user":
            return last and last["id"]
        picked = conn.execute("SELECT picked_id FROM choices WHERE prompt_message_id = ? AND user_id = ? "
                              "ORDER BY id DESC LIMIT 1", (last["parent_id"], user_id)).fetchone()
        return picked[0] if picked else last["id"]

    def add_message(self, conversation_id: int, role: str, content: str, *, user_id: int,
                    parent_id: int | None = None, template: str | None = None, model: str | None = None,
                    adapter: str | None = None, sources: list[dict] | None = None, latency_ms: float | None = None,
                    prompt_tokens: int | None = None, completion_tokens: int | None = None,
                    decoding: dict | None = None, root: bool = False, stopped: bool = False,
                    context_messages: int | None = None) -> int:
        """Store one message of `user_id`'s conversation; returns its id.

        `parent_id`: for an assistant message the user message it answers (a retry is a sibling: same parent);
        for a user message the answer it follows. When None: assistant -> the latest user message; user -> the
        latest message, or the picked candidate if that turn had a regenerate-and-pick choice. Pass it explicitly
        when the UI knows better. `root=True`: a user message that starts the conversation over (no parent: an
        edited first question), whatever came before. `decoding`: how an answer was decoded (temperature, top_p,
        seed, max_new_tokens: numbers or None), stored as JSON. `stopped`: an answer the user stopped before its end.
        `context_messages`: how many earlier messages the model was given with the question (an answer's).
        """
        if role not in MESSAGE_ROLES:
            raise FeedbackError(f"role must be one of {MESSAGE_ROLES}, got {role!r}")
        limit = self.max_user_chars if role == "user" else self.max_answer_chars
        content = check_text(content, f"{role} message", limit, allow_empty=role != "user")
        meta = {k: optional_text(v, k) for k, v in (("template", template), ("model", model), ("adapter", adapter))}
        if sources is not None:
            if not isinstance(sources, (list, tuple)) or not all(isinstance(s, dict) for s in sources):
                raise FeedbackError("sources must be a list of dicts")
            sources = json.dumps(list(sources), ensure_ascii=False, default=json_default)
            if len(sources) > MAX_SOURCES_CHARS:
                raise FeedbackError(f"sources are too large: {len(sources)} characters (limit {MAX_SOURCES_CHARS})")
        decoding = check_decoding(decoding)
        values = (optional_number(latency_ms, "latency_ms", float), optional_number(prompt_tokens, "prompt_tokens", int),
                  optional_number(completion_tokens, "completion_tokens", int))
        if stopped and role != "assistant":
            raise FeedbackError("only an answer can be stopped")
        context_messages = optional_count(context_messages, "context_messages", role)
        with self._write() as conn:
            self._owned_conversation(conn, conversation_id, user_id)
            if role == "system":
                if parent_id is not None:
                    raise FeedbackError("a system message has no parent")
            elif root:
                if role != "user" or parent_id is not None:
                    raise FeedbackError("only a user message without a parent can start a new root")
            elif parent_id is None:
                parent_id = self._default_parent(conn, conversation_id, role, user_id)
            else:
                parent = self._owned_message(conn, parent_id, user_id)
                if parent["conversation_id"] != conversation_id:
                    raise FeedbackError(f"parent message {parent_id} is in another conversation")
                allowed = ("user",) if role == "assistant" else ("user", "assistant")
                if parent["role"] not in allowed:
                    raise FeedbackError(f"a {role} message cannot reply to a {parent['role']} message")
            return conn.execute(
                "INSERT INTO messages (conversation_id, parent_id, role, content, template, model, adapter, sources, "
                "latency_ms, prompt_tokens, completion_tokens, decoding, stopped, context_messages, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, parent_id, role, content, meta["template"], meta["model"], meta["adapter"],
                 sources, *values, decoding, 1 if stopped else None, context_messages, now_iso())).lastrowid

    def _decorate(self, rows: list[dict], user_id: int) -> list[dict]:
        """Parse sources and decoding; add this user's latest `edited` text and `rating` (value) for each message."""
        if not rows:
            return rows
        ids = [r["id"] for r in rows]
        marks = ",".join("?" * len(ids))
        edited = {r["message_id"]: r["edited"] for r in self._rows(
            f"SELECT message_id, edited FROM edits WHERE id IN (SELECT max(id) FROM edits WHERE user_id = ? "
            f"AND message_id IN ({marks}) GROUP BY message_id)", (user_id, *ids))}
        rated = {r["message_id"]: r["value"] for r in self._rows(
            f"SELECT message_id, value FROM ratings WHERE id IN (SELECT max(id) FROM ratings WHERE user_id = ? "
            f"AND message_id IN ({marks}) GROUP BY message_id)", (user_id, *ids))}
        for r in rows:
            r["sources"] = json.loads(r["sources"]) if r["sources"] else None
            r["decoding"] = json.loads(r["decoding"]) if r.get("decoding") else None
            r["edited"] = edited.get(r["id"])
            r["rating"] = rated.get(r["id"]) or None  # 0: the thumb was taken back
        return rows

    def message(self, message_id: int, user_id: int) -> dict:
        """One of the user's messages (with `edited`/`rating` of the latest events); NotFoundError otherwise."""
        return self._decorate([self._owned_message(self._conn(), message_id, user_id)], user_id)[0]

    def conversation(self, conversation_id: int, user_id: int) -> list[dict]:
        """All messages of the user's conversation in insertion order (retries included: see parent_id)."""
        self._owned_conversation(self._conn(), conversation_id, user_id)
        rows = self._rows("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        return self._decorate(rows, user_id)

    def conversations(self, user_id: int, include_hidden: bool = False) -> list[dict]:
        """The user's conversations, newest first: id, title (the latest rename), created, messages, last_message,
        adapter (of the latest answer), hidden. Hidden (deleted) ones only with `include_hidden`."""
        rows = self._rows(
            "SELECT c.id, coalesce((SELECT title FROM conversation_changes WHERE conversation_id = c.id "
            "AND action = 'rename' ORDER BY id DESC LIMIT 1), c.title) AS title, c.created, count(m.id) AS messages, "
            "max(m.created) AS last_message, (SELECT adapter FROM messages WHERE conversation_id = c.id "
            "AND role = 'assistant' ORDER BY id DESC LIMIT 1) AS adapter, " + _HIDDEN.format("c.id") + " AS hidden "
            "FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id WHERE c.user_id = ? "
            "GROUP BY c.id ORDER BY coalesce(max(m.id), 0) DESC, c.id DESC", (check_id(user_id, "user_id"),))
        for r in rows:
            r["hidden"] = bool(r["hidden"])
        return rows if include_hidden else [r for r in rows if not r["hidden"]]

    def rename_conversation(self, conversation_id: int, user_id: int, title: str) -> int:
        """A new title for one of the user's conversations (append-only: the latest rename wins)."""
        title = check_text(title, "title", MAX_META_CHARS)
        return self._change_conversation(conversation_id, user_id, "rename", title)

    def hide_conversation(self, conversation_id: int, user_id: int) -> int:
        """Delete from the user's list. Its messages and feedback stay on record: they are training data unless
        the user opts out (`set_opt_out`)."""
        return self._change_conversation(conversation_id, user_id, "hide", None)

    def _change_conversation(self, conversation_id, user_id, action: str, title: str | None) -> int:
        with self._write() as conn:
            self._owned_conversation(conn, conversation_id, user_id)
            return conn.execute("INSERT INTO conversation_changes (conversation_id, user_id, action, title, created) "
                                "VALUES (?, ?, ?, ?, ?)",
                                (conversation_id, user_id, action, title, now_iso())).lastrowid

    def branch(self, conversation_id: int, user_id: int) -> list[dict]:
        """The messages of the user's conversation as last shown (feedback.history.current_branch), each with
        the user's latest `edited` text and `rating`; NotFoundError for another user's, a deleted or a missing id."""
        from feedback.history import current_branch

        return current_branch(*self.tree(conversation_id, user_id))

    def tree(self, conversation_id: int, user_id: int) -> tuple[list[dict], dict, list[int]]:
        """A user's visible conversation as stored: (every message, decorated as `conversation` gives them;
        question id -> the answer id picked last; undone question ids); NotFoundError for another user's, a deleted
        or a missing id."""
        conn = self._conn()
        self._owned_conversation(conn, conversation_id, user_id)
        if conn.execute("SELECT " + _HIDDEN.format("?"), (conversation_id,)).fetchone()[0]:
            raise NotFoundError(f"conversation {conversation_id} was deleted")
        rows = self._rows("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        picks = {r["prompt_message_id"]: r["picked_id"] for r in self._rows(
            "SELECT prompt_message_id, picked_id FROM choices WHERE user_id = ? AND prompt_message_id IN "
            "(SELECT id FROM messages WHERE conversation_id = ?) ORDER BY id", (user_id, conversation_id))}
        undone = [r["message_id"] for r in self._rows(
            "SELECT message_id FROM undos WHERE user_id = ? AND message_id IN "
            "(SELECT id FROM messages WHERE conversation_id = ?)", (user_id, conversation_id))]
        return self._decorate(rows, user_id), picks, undone

    def undo(self, message_id: int, user_id: int) -> int:
        """↶ undo: the user took their question `message_id` and what followed it off the screen (append-only; the
        messages stay on record). NotFoundError for another user's or a missing question."""
        with self._write() as conn:
            self._owned_message(conn, check_id(message_id, "message_id"), user_id, role="user")
            return conn.execute("INSERT INTO undos (message_id, user_id, created) VALUES (?, ?, ?)",
                                (message_id, user_id, now_iso())).lastrowid

    # --- feedback events ------------------------------------------------------------------------------------
    def rate(self, message_id: int, user_id: int, value: int, reasons: Sequence[str] = (), comment: str = "") -> int:
        """Thumbs up (+1) / down (-1) on an answer in the user's own conversation; a later rating supersedes."""
        if isinstance(value, bool) or value not in (1, -1):
            raise FeedbackError(f"rating value must be +1 or -1, got {value!r}")
        return self._rating(message_id, user_id, value, reasons, comment)

    def retract(self, message_id: int, user_id: int) -> int:
        """The user takes their thumb back: an append-only rating of 0 that supersedes their earlier ones, so the
        answer counts as unrated (datasets and stats read the latest rating per message and user)."""
        return self._rating(message_id, user_id, 0, (), "")

    def _rating(self, message_id, user_id, value: int, reasons: Sequence[str], comment: str) -> int:
        if isinstance(reasons, str) or not isinstance(reasons, (list, tuple)):
            raise FeedbackError("reasons must be a list of reason tags")
        unknown = [r for r in reasons if r not in REASONS]
        if unknown:
            raise FeedbackError(f"unknown reason(s) {unknown}; known: {list(REASONS)}")
        reasons_json = json.dumps(list(dict.fromkeys(reasons)))
        comment = check_text(comment if comment is not None else "", "comment", self.max_comment_chars, allow_empty=True)
        check_id(message_id, "message_id"), check_id(user_id, "user_id")
        params = (message_id, user_id, int(value), reasons_json, comment, now_iso(), message_id, user_id)
        with self._write() as conn:  # the ownership check and the insert are one statement (the UI hot path)
            cur = conn.execute("INSERT INTO ratings (message_id, user_id, value, reasons, comment, created) "
                               f"SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS ({_OWNED_ANSWER})", params)
            if cur.rowcount != 1:
                self._owned_message(conn, message_id, user_id, "assistant")  # raises the precise error
                raise FeedbackError(f"message {message_id} cannot be rated")
            return cur.lastrowid

    def edit(self, message_id: int, user_id: int, edited: str) -> int:
        """A corrected answer. The original is read from the database (the answer as generated)."""
        edited = check_text(edited, "edited answer", self.max_answer_chars)
        check_id(message_id, "message_id"), check_id(user_id, "user_id")
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO edits (message_id, user_id, original, edited, created) "
                "SELECT m.id, ?, m.content, ?, ? FROM messages m WHERE m.id = ? AND m.role = 'assistant' "
                "AND m.conversation_id IN (SELECT id FROM conversations WHERE user_id = ?) "
                "AND ? IS NOT coalesce((SELECT edited FROM edits WHERE message_id = m.id AND user_id = ? "
                "ORDER BY id DESC LIMIT 1), m.content)",
                (user_id, edited, now_iso(), message_id, user_id, edited, user_id))
            if cur.rowcount != 1:
                self._owned_message(conn, message_id, user_id, "assistant")  # raises the precise error
                raise FeedbackError("the edit does not change the answer")
            return cur.lastrowid

    def choose(self, prompt_message_id: int, user_id: int, candidate_ids: Sequence[int], picked_id: int) -> int:
        """Regenerate-and-pick: `candidate_ids` (>= 2 assistant answers to the same user message) and the pick.
        Candidates whose texts are equal after normalization (case, width, whitespace) are refused."""
        if not isinstance(candidate_ids, (list, tuple)):
            raise FeedbackError("candidate_ids must be a list of message ids")
        ids = [check_id(c, "candidate id") for c in candidate_ids]
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise FeedbackError("a choice needs at least two distinct candidates")
        if check_id(picked_id, "picked_id") not in ids:
            raise FeedbackError(f"picked message {picked_id} is not one of the candidates")
        with self._write() as conn:
            self._owned_message(conn, prompt_message_id, user_id, "user")
            seen: dict[str, int] = {}
            for c in ids:
                cand = self._owned_message(conn, c, user_id, "assistant")
                if cand["parent_id"] != prompt_message_id:
                    raise FeedbackError(f"message {c} is not an answer to message {prompt_message_id}")
                same = seen.setdefault(normalize_text(cand["content"]), c)
                if same != c:  # a pair of one text twice teaches nothing (and says the text beats itself)
                    raise FeedbackError(f"answers {same} and {c} are the same text; a choice needs different answers")
            return conn.execute("INSERT INTO choices (prompt_message_id, user_id, candidates, picked_id, created) "
                                "VALUES (?, ?, ?, ?, ?)",
                                (prompt_message_id, user_id, json.dumps(ids), picked_id, now_iso())).lastrowid

    # --- readers for training, stats, backup ----------------------------------------------------------------
    def event_count(self, since: str | None = None) -> int:
        """Ratings + edits + choices created after `since` (all when None)."""
        s = normalize_since(since)
        return sum(self._conn().execute(f"SELECT count(*) FROM {t} WHERE created > ?", (s,)).fetchone()[0]
                   for t in ("ratings", "edits", "choices"))

    def training_events(self, since: str | None = None) -> list[dict]:
        """Every feedback event created after `since`, with its prompt and answers; see feedback.events."""
        from feedback.events import load_training_events

        return load_training_events(self.db, normalize_since(since))

    def stats(self, user_id: int | None = None) -> dict:
        """Counts and ratios for the Feedback view (all users, or only `user_id`'s); see feedback.stats."""
        from feedback.stats import compute

        return compute(self.db, None if user_id is None else check_id(user_id, "user_id"))

    def backup(self, path: str | Path) -> None:
        """A consistent copy of the database through `VACUUM INTO` (refuses an existing target)."""
        target = Path(path)
        if target.exists():
            raise FeedbackError(f"{target} already exists; refusing to overwrite it")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._conn().execute("VACUUM INTO ?", (str(target),))
