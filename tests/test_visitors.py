"""Public Space mode, the pure parts: visitor identities (signed cookie, page session, Hugging Face login), who is
admin (only signed-in names in KAIZEN_ADMINS), the settings that pick the data dir, and the authorization point."""
from __future__ import annotations

import os
import time
from pathlib import Path

import gradio as gr
import pytest

from agent.settings import Settings
from ui.authz import REFUSAL, Authz
from web.visitors import COOKIE, PREFIX, Visitors, load_key, oauth_name, set_cookie_header


def oauth_session(name: str, expires_in: float = 3600) -> dict:
    """What Gradio's /login/callback stores in its session after a Hugging Face login."""
    return {"oauth_info": {"access_token": "t", "expires_at": time.time() + expires_in,
                           "userinfo": {"preferred_username": name, "name": name.title()}}}


def test_the_key_is_made_once_private_and_kept(tmp_path):
    key = load_key(tmp_path)
    assert len(key) == 32 and load_key(tmp_path) == key
    assert (tmp_path / "visitor.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "visitor.key").write_bytes(b"short")
    with pytest.raises(ValueError, match="visitor key is damaged"):
        load_key(tmp_path)


def test_a_cookie_names_one_visitor_and_cannot_be_forged(tmp_path):
    v = Visitors(load_key(tmp_path))
    a, b = v.mint(), v.mint()
    name_a = v.from_cookie(a)
    assert name_a.startswith(PREFIX) and name_a != v.from_cookie(b) and v.from_cookie(a) == name_a
    vid, _, mac = a.partition(".")
    other = "0123456789abcdef"
    assert v.from_cookie(f"{other}.{mac}") is None  # another id with a's signature
    assert v.from_cookie(vid) is None and v.from_cookie("") is None and v.from_cookie(None) is None
    assert v.from_cookie(a + "0") is None
    assert Visitors(os.urandom(32)).from_cookie(a) is None  # another Space's key


def test_identity_order_login_then_cookie_then_page_session(tmp_path):
    v = Visitors(load_key(tmp_path), {"alice"})
    cookie = v.mint()
    assert v.identify({COOKIE: cookie}, oauth_session("alice"), "s1") == "alice"
    assert v.identify({COOKIE: cookie}, oauth_session("alice", -10), "s1") == v.from_cookie(cookie)  # expired
    assert v.identify({COOKIE: cookie}, {}, "s1") == v.from_cookie(cookie)
    by_session = v.identify({}, None, "s1")
    assert by_session.startswith(PREFIX + "s-") and by_session != v.identify({}, None, "s2")
    assert v.identify({COOKIE: "forged.0"}, None, "s1") == by_session
    assert v.identify({}, None, None) is None
    assert oauth_name({"oauth_info": {"userinfo": {"preferred_username": "visitor:x"}}}) is None


def test_only_signed_in_names_in_admins_are_admins(tmp_path):
    v = Visitors(load_key(tmp_path), {"alice"})
    assert v.role("alice") == "admin" and v.role("bob") == "user" and v.role(None) is None
    anon = v.from_cookie(v.mint())
    assert v.role(anon) == "user"
    assert Visitors(b"k" * 32, {anon}).role(anon) == "user"  # even if someone lists an anonymous name


def test_cookie_attributes_for_a_space_iframe_and_for_plain_http():
    https = set_cookie_header("v.m", https=True).decode()
    assert "HttpOnly" in https and "Secure" in https and "SameSite=None" in https and "Partitioned" in https
    plain = set_cookie_header("v.m", https=False).decode()
    assert plain.startswith(f"{COOKIE}=v.m;") and "SameSite=Lax" in plain and "Secure" not in plain


def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("KAIZEN_"):
            monkeypatch.delenv(k)


def test_public_data_dir_goes_to_persistent_storage_when_attached(monkeypatch, tmp_path):
    clean_env(monkeypatch)
    monkeypatch.setenv("KAIZEN_PUBLIC", "1")
    monkeypatch.setenv("KAIZEN_PERSISTENT_DIR", str(tmp_path))
    s = Settings.from_env()
    assert s.data_dir == tmp_path / "kaizen" and s.persistent
    monkeypatch.setenv("KAIZEN_PERSISTENT_DIR", str(tmp_path / "absent"))
    s = Settings.from_env()
    assert s.data_dir == Path("./data") and not s.persistent
    monkeypatch.setenv("KAIZEN_DATA_DIR", str(tmp_path / "mine"))  # an explicit data dir wins
    monkeypatch.setenv("KAIZEN_PERSISTENT_DIR", str(tmp_path))
    s = Settings.from_env()
    assert s.data_dir == tmp_path / "mine" and s.persistent  # inside the persistent storage
    monkeypatch.delenv("KAIZEN_PUBLIC")
    monkeypatch.delenv("KAIZEN_DATA_DIR")
    assert Settings.from_env().data_dir == Path("./data")  # not public: the usual default


REFUSED = [({"KAIZEN_ADMINS": "alice, visitor:0123456789abcdef"},
            "KAIZEN_ADMINS: 'visitor:0123456789abcdef' is not a Hugging Face"),
           ({"KAIZEN_ADMINS": "alice", "KAIZEN_AUTH_FILE": "users.json"}, "exclude each other")]


def test_public_settings_refuse_bad_admins_and_a_users_file(monkeypatch):
    clean_env(monkeypatch)
    monkeypatch.setenv("KAIZEN_PUBLIC", "1")
    monkeypatch.setenv("KAIZEN_ADMINS", " alice , bob.smith ,")
    assert Settings.from_env().admin_names == {"alice", "bob.smith"}
    for env, message in REFUSED:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            with pytest.raises(ValueError, match=message):
                Settings.from_env()


def request(cookies=None, session_hash="sess1", username=None) -> gr.Request:
    """A gr.Request as Gradio rebuilds it for a queued event (no live fastapi request)."""
    return gr.Request(username=username, session_hash=session_hash, cookies=cookies or {}, headers={})


def test_authz_in_public_mode(tmp_path):
    settings = Settings(data_dir=tmp_path, public=True, admins="alice")
    authz = Authz.from_settings(settings)
    assert authz.public and authz.login_mode
    visitors = Visitors.from_settings(settings)
    cookie = visitors.mint()
    r = request({COOKIE: cookie})
    assert authz.user(r) == visitors.from_cookie(cookie) and not authz.is_admin(r)
    with pytest.raises(gr.Error, match=REFUSAL):
        authz.require_admin(r, "promote")
    # a username Gradio's own login would set counts for nothing here: there is no users file
    assert not authz.is_admin(request(username="alice"))
    assert authz.user(request(session_hash="other")) != authz.user(request(session_hash="sess2"))
    with pytest.raises(gr.Error, match="Log in first"):
        authz.require_user(request(session_hash=None))
