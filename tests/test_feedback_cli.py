"""`kaizen feedback ...` and `kaizen users ...` through the real entry point."""
from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from agent.settings import Settings
from feedback import auth
from feedback.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("KAIZEN_DATA_DIR", str(d))
    monkeypatch.delenv("KAIZEN_AUTH_FILE", raising=False)
    store = Store(Settings.from_env().db_path)
    uid = store.ensure_user("alice")
    conv = store.new_conversation(uid)
    store.add_message(conv, "user", "q", user_id=uid)
    a = store.add_message(conv, "assistant", "a", user_id=uid, adapter="v1")
    store.rate(a, uid, -1, ["wrong"])
    store.edit(a, uid, "better <b>a</b>")
    store.close()
    return d


def test_stats_table_and_json(data_dir, capsys):
    assert main(["feedback", "stats"]) == 0
    out = capsys.readouterr().out
    assert "thumbs down: 1" in out and "By adapter" in out and "better <b>a</b>" in out
    assert main(["feedback", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["totals"]["ratings"] == 1 and stats["by_adapter"][0]["adapter"] == "v1"
    assert main(["feedback", "stats", "--user", "nobody"]) == 2
    assert "no user named 'nobody'" in capsys.readouterr().err


def test_backup_and_refusal(data_dir, tmp_path, capsys):
    target = tmp_path / "copy.db"
    assert main(["feedback", "backup", str(target)]) == 0
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM edits").fetchone()[0] == 1
    assert main(["feedback", "backup", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_opt_out_and_in(data_dir, capsys):
    assert main(["feedback", "opt-out", "alice"]) == 0
    store = Store(data_dir / "kaizen.db")
    assert store.find_user("alice")["opted_out"] is True
    assert all(e["opted_out"] for e in store.training_events())
    assert main(["feedback", "opt-in", "alice"]) == 0
    assert store.find_user("alice")["opted_out"] is False
    assert main(["feedback", "opt-out", "mallory"]) == 2
    assert "no user named 'mallory'" in capsys.readouterr().err
    store.close()


def test_users_add_with_password_stdin(data_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret-password\n"))
    assert main(["users", "add", "root", "--role", "admin", "--password-stdin"]) == 0
    users = data_dir / "users.json"
    assert auth.verify(users, "root", "s3cret-password") and auth.role_of(users, "root") == "admin"
    assert "KAIZEN_AUTH_FILE" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("other-password\n"))
    assert main(["users", "add", "root", "--password-stdin"]) == 2  # exists
    assert main(["users", "list"]) == 0
    assert capsys.readouterr().out.strip() == "root\tadmin"


@pytest.mark.slow
def test_installed_kaizen_command(data_dir):
    exe = Path(sys.executable).parent / "kaizen"
    if not exe.exists():
        pytest.skip(f"{exe} not installed (pip install -e .)")
    env = dict(os.environ, KAIZEN_DATA_DIR=str(data_dir))
    proc = subprocess.run([str(exe), "feedback", "stats", "--json"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["totals"]["edits"] == 1
