"""Users file: PBKDF2 hashes, verification, gradio auth callable."""
from __future__ import annotations

import json
import stat

import pytest

from feedback import auth
from feedback.auth import AuthError

FAST = 1000  # iterations for tests; the default (600k) is exercised once


def test_add_and_verify(tmp_path):
    users = tmp_path / "conf" / "users.json"
    auth.add_user(users, "alice", "correct horse", "admin", iterations=FAST)
    auth.add_user(users, "bob", "battery staple", iterations=FAST)
    assert auth.verify(users, "alice", "correct horse")
    assert auth.verify(users, "bob", "battery staple")
    assert not auth.verify(users, "alice", "battery staple")
    assert not auth.verify(users, "alice", "correct horse ")
    assert not auth.verify(users, "carol", "correct horse")
    assert not auth.verify(users, "alice", "")
    assert auth.role_of(users, "alice") == "admin" and auth.role_of(users, "bob") == "user"
    assert auth.role_of(users, "carol") is None
    data = json.loads(users.read_text())
    entry = data["users"][0]
    assert set(entry) == {"name", "role", "salt", "hash", "iterations"}
    assert "correct horse" not in users.read_text()
    assert len(bytes.fromhex(entry["salt"])) == 16 and len(bytes.fromhex(entry["hash"])) == 32
    assert data["users"][0]["salt"] != data["users"][1]["salt"]
    assert stat.S_IMODE(users.stat().st_mode) == 0o600


def test_default_iterations_round_trip(tmp_path):
    users = tmp_path / "users.json"
    auth.add_user(users, "alice", "correct horse")
    assert json.loads(users.read_text())["users"][0]["iterations"] == auth.ITERATIONS
    assert auth.verify(users, "alice", "correct horse")


def test_refusals_leave_file_unchanged(tmp_path):
    users = tmp_path / "users.json"
    auth.add_user(users, "alice", "correct horse", iterations=FAST)
    before = users.read_bytes()
    for name, password, role in [("alice", "another pass", "user"), ("bob", "short", "user"),
                                 ("bob", "long enough", "root"), (" bob", "long enough", "user"),
                                 ("", "long enough", "user"), ("b\nob", "long enough", "user")]:
        with pytest.raises(AuthError):
            auth.add_user(users, name, password, role, iterations=FAST)
    assert users.read_bytes() == before
    auth.add_user(users, "alice", "new password", "admin", replace=True, iterations=FAST)
    assert auth.verify(users, "alice", "new password") and not auth.verify(users, "alice", "correct horse")
    assert [u["name"] for u in auth.load_users(users)] == ["alice"]


def test_auth_fn_for_gradio_reads_the_file_each_time(tmp_path):
    import asyncio
    import inspect

    users = tmp_path / "users.json"
    login = auth.auth_fn(users)
    assert inspect.iscoroutinefunction(login)  # Gradio awaits it; the hash runs in a thread, off the event loop

    def check(name, password):
        return asyncio.run(login(name, password))
    assert check("alice", "correct horse") is False  # no file yet
    auth.add_user(users, "alice", "correct horse", iterations=FAST)
    assert check("alice", "correct horse") is True
    assert check("alice", "wrong password") is False
    users.write_text("{not json")
    assert check("alice", "correct horse") is False
    with pytest.raises(AuthError, match="not a valid users file"):
        auth.load_users(users)
