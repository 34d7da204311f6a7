"""The one authorization point (ui/authz.py): roles from the users file, the refusal, and the wrapper that
Gradio must still call with the handler's inputs and the request."""
from __future__ import annotations

import inspect

import gradio as gr
import pytest
from gradio.helpers import special_args

from feedback import auth
from ui.authz import REFUSAL, Authz, NotAdmin

FAST = 1000


@pytest.fixture
def users(tmp_path):
    path = tmp_path / "users.json"
    auth.add_user(path, "alice", "correct horse", "admin", iterations=FAST)
    auth.add_user(path, "bob", "battery staple", "user", iterations=FAST)
    return path


def req(name=None):
    return gr.Request(username=name, session_hash="s1")


def test_roles_in_login_mode_are_read_from_the_users_file_each_time(users):
    a = Authz(users)
    assert a.is_admin(req("alice")) and not a.is_admin(req("bob"))
    assert not a.is_admin(req(None)) and not a.is_admin(None) and not a.is_admin(req("mallory"))
    with pytest.raises(NotAdmin, match=REFUSAL):
        a.check(req("bob"), "promote")
    auth.add_user(users, "alice", "correct horse", "user", replace=True, iterations=FAST)  # demoted
    assert not a.is_admin(req("alice"))
    users.write_text("{broken")
    assert not a.is_admin(req("bob")) and a.role("bob") is None


def test_single_local_user_is_admin():
    a = Authz(None)
    assert a.is_admin(None) and a.is_admin(req(None)) and Authz("").is_admin(req("whoever"))


def test_admin_only_adds_a_request_parameter_gradio_fills(users):
    calls = []

    def promote(version, share=0.2):
        calls.append((version, share))
        return f"promoted {version}"

    guarded = Authz(users).admin_only(promote, "promote")
    params = list(inspect.signature(guarded).parameters)
    assert params == ["version", "share", "_authz_request"] and guarded.kaizen_admin_only
    assert guarded.__name__ == "admin_promote"  # what Gradio names the endpoint
    inputs, *_ = special_args(guarded, ["v1", 0.5], request=req("alice"))
    assert guarded(*inputs) == "promoted v1" and calls == [("v1", 0.5)]
    inputs, *_ = special_args(guarded, ["v2", 0.5], request=req("bob"))
    with pytest.raises(gr.Error, match=REFUSAL):
        guarded(*inputs)
    with pytest.raises(gr.Error, match="an anonymous client"):
        guarded("v3", 0.5)
    assert calls == [("v1", 0.5)]  # refused calls never reached the handler


def test_admin_only_keeps_generators_and_an_existing_request(users):
    seen = []

    def run(task, steps, request: gr.Request = None):
        seen.append(request.username)
        yield f"{task} 1"
        yield f"{task} 2"

    guarded = Authz(users).admin_only(run)
    assert inspect.isgeneratorfunction(guarded)
    assert list(inspect.signature(guarded).parameters) == ["task", "steps", "request"]
    inputs, *_ = special_args(guarded, ["squad", 3], request=req("alice"))
    assert list(guarded(*inputs)) == ["squad 1", "squad 2"] and seen == ["alice"]
    inputs, *_ = special_args(guarded, ["squad", 3], request=req("bob"))
    with pytest.raises(gr.Error, match=REFUSAL):
        next(guarded(*inputs))
    assert seen == ["alice"]


def test_admin_only_keeps_a_progress_default(users):
    def upload(files, progress=gr.Progress()):
        return files

    guarded = Authz(None).admin_only(upload)
    inputs, progress_index, *_ = special_args(guarded, [["a.txt"]], request=req(None))
    assert progress_index == 1 and guarded(*inputs) == ["a.txt"]
