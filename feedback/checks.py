"""The store's refusals and input checks, pure: the error types, the length / type / id checks every write makes
before touching the database, the full-disk test, and the `since` format of the training readers."""
from __future__ import annotations

import errno
import json
import sqlite3
from datetime import datetime, timezone

MAX_META_CHARS = 200  # title, template, model, adapter


class FeedbackError(ValueError):
    """Refused input: nothing was written."""


class NotFoundError(FeedbackError, LookupError):
    """No such user / conversation / message for this user (others' ids look exactly like missing ones)."""


class StoreFullError(FeedbackError):
    """The disk that holds the store is full (or the store reached KAIZEN_MAX_DB_MB): the write was rolled back,
    nothing of it was saved, and everything saved before is intact. The message is for the user; the operator gets
    one log line (`kaizen.store`) naming the file."""


STORE_FULL = ("the server's disk is full: your feedback was not saved (nor this chat turn). Everything saved before "
              "is kept; please tell the person who runs this server.")


def is_disk_full(e: BaseException) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full") or an OSError for a full disk or quota."""
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(e)
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def normalize_since(since: str | None) -> str:
    """An ISO date/time (naive = UTC) in the stored format; None -> '' (everything)."""
    if since is None or since == "":
        return ""
    try:
        t = datetime.fromisoformat(str(since))
    except ValueError as e:
        raise FeedbackError(f"since={since!r}: expected an ISO date or date-time") from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


# --- validation helpers -------------------------------------------------------------------------------------
def check_id(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FeedbackError(f"{what} must be an integer id, got {value!r}")
    return value


def check_text(value, what: str, limit: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise FeedbackError(f"{what} must be text, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise FeedbackError(f"{what} is empty")
    if len(value) > limit:
        raise FeedbackError(f"{what} is too long: {len(value)} characters (limit {limit})")
    return value


def optional_text(value, what: str, limit: int = MAX_META_CHARS) -> str | None:
    return None if value is None else check_text(value, what, limit, allow_empty=True)


def optional_number(value, what: str, cast):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise FeedbackError(f"{what} must be a non-negative number, got {value!r}")
    return cast(value)


def optional_count(value, what: str, role: str) -> int | None:
    """A whole non-negative count that only an answer carries (e.g. `context_messages`), or None."""
    if value is not None and (role != "assistant" or type(value) is not int or value < 0):
        raise FeedbackError(f"{what} is a count of earlier messages, for an answer: got {value!r} for a {role} "
                            "message")
    return value


def json_default(o):
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    return str(o)


DECODING_KEYS = ("temperature", "top_p", "seed", "max_new_tokens", "repetition_penalty", "no_repeat_ngram_size")


def check_decoding(value) -> str | None:
    """An answer's decoding as stored (JSON), or None: a dict of the known keys, each a number or None."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - set(DECODING_KEYS):
        raise FeedbackError(f"decoding must be a dict of {', '.join(DECODING_KEYS)}, got {value!r}"[:300])
    for k, v in value.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise FeedbackError(f"decoding {k} must be a number, got {v!r}"[:200])
    return json.dumps({k: value[k] for k in DECODING_KEYS if k in value}, sort_keys=False)
