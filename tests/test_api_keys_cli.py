"""`kaizen users key NAME`: an API key shown once, stored hashed, tied to the same store user as NAME's logins."""
import sqlite3

import pytest

from cli.main import main


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("KAIZEN_DATA_DIR", str(d))
    monkeypatch.delenv("KAIZEN_AUTH_FILE", raising=False)
    return d


def test_key_is_shown_once_and_stored_hashed(data_dir, capsys):
    from feedback import api_store
    from feedback.store import Store

    assert main(["users", "key", "alice"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("kz-") and len(key) > 40 and "shown only now" in out.err
    with sqlite3.connect(data_dir / "kaizen.db") as db:
        dump = "\n".join(db.iterdump())
    assert key not in dump and api_store.hash_key(key) in dump
    store = Store(data_dir / "kaizen.db")
    assert api_store.user_for_key(store, key)["name"] == "alice"
    assert main(["users", "key", "alice"]) == 0  # a second key; both work
    second = capsys.readouterr().out.strip()
    assert second != key and api_store.user_for_key(store, second)["name"] == "alice"
    assert main(["users", "key", "alice", "--revoke"]) == 0
    assert "2 API key(s) revoked" in capsys.readouterr().out
    assert api_store.user_for_key(store, key) is None and api_store.user_for_key(store, second) is None


def test_login_mode_keys_only_for_users_in_the_users_file(data_dir, tmp_path, monkeypatch, capsys):
    from feedback import auth
    from feedback.store import Store

    users = tmp_path / "users.json"
    auth.add_user(users, "carol", "password123", "admin", iterations=1000)
    monkeypatch.setenv("KAIZEN_AUTH_FILE", str(users))
    assert main(["users", "key", "mallory"]) == 2
    assert "no user named 'mallory'" in capsys.readouterr().err
    assert main(["users", "key", "carol"]) == 0
    assert Store(data_dir / "kaizen.db").find_user("carol")["role"] == "admin"  # the role of the users file
