"""Login users: a JSON users file with PBKDF2-SHA256 password hashes.

File format: {"users": [{"name", "role", "salt" (hex), "hash" (hex), "iterations"}]} ("iterations" optional,
default ITERATIONS). Written atomically with mode 0600. `auth_fn(users_file)` is what `gr.Blocks.launch(auth=...)`
takes; it re-reads the file on each login, so `kaizen users add` works without a restart.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.files import atomic_write

ITERATIONS = 600_000  # OWASP 2023 recommendation for PBKDF2-HMAC-SHA256
ROLES = ("user", "admin")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
MAX_NAME_CHARS = 100


class AuthError(ValueError):
    """Bad users file or refused user/password."""


def hash_password(password: str, salt: bytes, iterations: int = ITERATIONS) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def load_users(users_file: str | Path) -> list[dict]:
    """The entries of the users file ([] if it does not exist)."""
    path = Path(users_file)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        users = data["users"]
        if not isinstance(users, list) or not all(isinstance(u, dict) and {"name", "role", "salt", "hash"} <= set(u)
                                                  for u in users):
            raise ValueError("each user needs name, role, salt and hash")
    except (ValueError, KeyError, TypeError) as e:
        raise AuthError(f"{path}: not a valid users file ({e})") from e
    return users


def find(users_file: str | Path, name: str) -> dict | None:
    """The entry for `name`, or None."""
    return next((u for u in load_users(users_file) if u["name"] == name), None)


def role_of(users_file: str | Path, name: str) -> str | None:
    """'user' / 'admin' for a known user, None otherwise."""
    user = find(users_file, name)
    return user["role"] if user else None


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or name != name.strip() or len(name) > MAX_NAME_CHARS:
        raise AuthError(f"user name must be 1-{MAX_NAME_CHARS} characters without surrounding spaces, got {name!r}")
    if any(ord(c) < 32 for c in name):
        raise AuthError("user name must not contain control characters")
    return name


def add_user(users_file: str | Path, name: str, password: str, role: str = "user", *, replace: bool = False,
             iterations: int = ITERATIONS) -> None:
    """Add a user (or, with replace=True, reset an existing user's password and role)."""
    _check_name(name)
    if role not in ROLES:
        raise AuthError(f"role must be one of {ROLES}, got {role!r}")
    if not isinstance(password, str) or not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AuthError(f"password must be {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters")
    path = Path(users_file)
    users = load_users(path)
    if any(u["name"] == name for u in users):
        if not replace:
            raise AuthError(f"user {name!r} already exists in {path}")
        users = [u for u in users if u["name"] != name]
    salt = secrets.token_bytes(16)
    users.append({"name": name, "role": role, "salt": salt.hex(),
                  "hash": hash_password(password, salt, iterations).hex(), "iterations": iterations})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"users": users}, indent=2) + "\n", mode=0o600)


_DUMMY_SALT = secrets.token_bytes(16)


def verify(users_file: str | Path, name: str, password: str) -> bool:
    """True when `name` exists and `password` matches. Unknown users cost the same time as known ones."""
    if not isinstance(name, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
        return False
    user = find(users_file, name)
    if user is None:
        hash_password(password, _DUMMY_SALT)
        return False
    try:
        expected = bytes.fromhex(user["hash"])
        actual = hash_password(password, bytes.fromhex(user["salt"]), int(user.get("iterations", ITERATIONS)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def auth_fn(users_file: str | Path) -> Callable[[str, str], Awaitable[bool]]:
    """A Gradio `auth=` callable: async (username, password) -> bool, reading `users_file` on every login. The
    PBKDF2 check (~0.5 s of CPU) runs in a worker thread, so logins never stall the event loop (Gradio awaits a
    coroutine function)."""
    path = Path(users_file)

    def check_now(username: str, password: str) -> bool:
        try:
            return verify(path, username, password)
        except AuthError:
            return False

    async def check(username: str, password: str) -> bool:
        return await asyncio.to_thread(check_now, username, password)

    return check
