"""What the OpenAI-compatible API (web/api.py) keeps in kaizen.db beside the feedback store (tables of
migration m003_api): API keys, completion ids and conversation threads.

- **API keys** map a bearer token to a store user (the same users the UI has: `Store.ensure_user`). A key is 32
  random bytes; only its sha256 is stored (a fast hash is enough for a random key: there is nothing to guess),
  and it is shown once, when made. A revoked key stops working at once.
- **Completion ids** (`chatcmpl-...`) name one stored assistant message of one user. Feedback names a completion
  id; it is looked up together with the caller, so another user's id reads exactly like an unknown one.
- **Threads** map a client's conversation (a stable key: web.schema.thread_key) to one stored conversation,
  created once even when two requests race (the lookup and the insert are one write transaction).

Every write goes through the Store's write lock (`Store._write`), like the Store's own writes.
"""
from __future__ import annotations

import hashlib
import secrets

from feedback.store import NotFoundError, Store, check_id, now_iso

KEY_PREFIX = "kz-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


# ---------------------------------------------------------------------------------------------- API keys
def create_key(store: Store, user_id: int) -> str:
    """A new API key for `user_id` (returned once; only its hash is kept)."""
    check_id(user_id, "user_id")
    key = new_key()
    with store._write() as conn:
        if not conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone():
            raise NotFoundError(f"user {user_id} not found")
        conn.execute("INSERT INTO api_keys (user_id, key_hash, prefix, created) VALUES (?, ?, ?, ?)",
                     (user_id, hash_key(key), key[:len(KEY_PREFIX) + 6], now_iso()))
    return key


def user_for_key(store: Store, key: str) -> dict | None:
    """The user (id, name, role) a live key belongs to; None for an unknown or revoked key."""
    if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    return store._one("SELECT u.id, u.name, u.role FROM api_keys k JOIN users u ON u.id = k.user_id "
                      "WHERE k.key_hash = ? AND k.revoked IS NULL", (hash_key(key),))


def any_keys(store: Store) -> bool:
    """Whether any live API key exists (then every API request must bring one)."""
    return store._one("SELECT 1 AS x FROM api_keys WHERE revoked IS NULL LIMIT 1") is not None


def keys_of(store: Store, user_id: int) -> list[dict]:
    return store._rows("SELECT id, prefix, created, revoked FROM api_keys WHERE user_id = ? ORDER BY id",
                       (check_id(user_id, "user_id"),))


def revoke_keys(store: Store, user_id: int) -> int:
    """Revoke every live key of `user_id`; returns how many."""
    check_id(user_id, "user_id")
    with store._write() as conn:
        return conn.execute("UPDATE api_keys SET revoked = ? WHERE user_id = ? AND revoked IS NULL",
                            (now_iso(), user_id)).rowcount


# ---------------------------------------------------------------------------------------------- completions
def record_completion(store: Store, completion_id: str, message_id: int, user_id: int) -> None:
    """`completion_id` names `message_id`, an assistant message of `user_id`'s (checked in the same transaction)."""
    with store._write() as conn:
        store._owned_message(conn, message_id, user_id, "assistant")
        conn.execute("INSERT INTO api_completions (id, message_id, user_id, created) VALUES (?, ?, ?, ?)",
                     (completion_id, message_id, user_id, now_iso()))


def message_of(store: Store, completion_id: str, user_id: int) -> int:
    """The message id behind the caller's completion id; NotFoundError for an unknown id or another user's."""
    if not isinstance(completion_id, str):
        raise NotFoundError(f"completion {completion_id!r} not found")
    row = store._one("SELECT message_id FROM api_completions WHERE id = ? AND user_id = ?",
                     (completion_id, check_id(user_id, "user_id")))
    if row is None:
        raise NotFoundError(f"completion {completion_id!r} not found")
    return row["message_id"]


def completion_of(store: Store, message_id: int, user_id: int) -> str | None:
    row = store._one("SELECT id FROM api_completions WHERE message_id = ? AND user_id = ? ORDER BY created LIMIT 1",
                     (message_id, user_id))
    return row["id"] if row else None


# ---------------------------------------------------------------------------------------------- threads
def find_thread(store: Store, user_id: int, key: str) -> int | None:
    """The conversation of `user_id`'s client thread `key`, or None (another user's thread is never found)."""
    row = store._one("SELECT conversation_id FROM api_threads WHERE user_id = ? AND thread_key = ?",
                     (check_id(user_id, "user_id"), key))
    return row["conversation_id"] if row else None


def thread(store: Store, user_id: int, key: str, title: str | None = None) -> tuple[int, bool]:
    """(conversation id, created now) for the client thread `key` of `user_id`; created once."""
    found = find_thread(store, user_id, key)
    if found is not None:
        return found, False
    title = None if title is None else title[:200]
    with store._write() as conn:
        row = store._one("SELECT conversation_id FROM api_threads WHERE user_id = ? AND thread_key = ?",
                         (user_id, key))
        if row:
            return row["conversation_id"], False
        if not conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone():
            raise NotFoundError(f"user {user_id} not found")
        cid = conn.execute("INSERT INTO conversations (user_id, title, created) VALUES (?, ?, ?)",
                           (user_id, title, now_iso())).lastrowid
        conn.execute("INSERT INTO api_threads (user_id, thread_key, conversation_id, created) VALUES (?, ?, ?, ?)",
                     (user_id, key, cid, now_iso()))
        return cid, True
