"""Public Space mode (KAIZEN_PUBLIC=1) attacked as visitors would: the real app in a subprocess (a tiny base), visitors
as raw clients with their own cookie jars, and two real Chromium contexts.

- `public_app`: no Hugging Face OAuth (as outside a Space), no persistent storage: visitors are anonymous, nobody
  is admin, and the page says that feedback is lost at restart.
- `oauth_app`: the Space bundle (`spaces.build`, its `space_app.py`) with the Space's OAuth as Gradio serves it on
  Spaces (SYSTEM=spaces and the OAUTH_* variables a Space with `hf_oauth: true` gets); signing in is simulated by
  the session cookie Gradio's /login/callback would set after Hugging Face answered (signed with the Space's OAuth
  secret: Hugging Face itself cannot be reached here).
  Persistent storage is attached: the data goes there and the page has no notice. Needs gradio[oauth] (authlib,
  itsdangerous); skipped without it.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import secrets
import sqlite3
import sys
import time

import pytest

from web.visitors import COOKIE, NOT_PERSISTENT
from tests import raw_client as R
from tests.conftest import running_app
from tests.test_authz_app import admin_things, assert_admin_endpoints_refuse, doc_rows, endpoint, registry_state, upload

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def public_app(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("public")
    data = root / "data"
    base, settings, version = admin_things(root, tokenizer, data)
    with running_app(data, base, KAIZEN_PUBLIC="1", KAIZEN_ADMINS="alice",
                     KAIZEN_PERSISTENT_DIR=str(root / "no-storage")) as server:
        server.update(version=version)
        yield server


def visitor(url, cookie: str | None = None):
    """A browser-like client: it loads the page first (which gives it its visitor cookie) and keeps its cookies."""
    c = R.client(url)
    if cookie is not None:
        c.cookies.set(COOKIE, cookie, domain="127.0.0.1")
    r = c.get("")
    assert r.status_code == 200
    return c


def chat_and_comment(c, cfg, question: str, comment: str) -> None:
    session = secrets.token_hex(6)
    r = R.call(c, endpoint(cfg, "chat")["fn_index"], [question, None, "plain", "off", "active", 0, 40], session_hash=session)
    assert r["success"], R.error_text(r)
    r = R.call(c, endpoint(cfg, "on_why")["fn_index"], [None, 1, ["wrong"], comment], session_hash=session)
    assert r["success"], R.error_text(r)


def feedback_view(c, cfg) -> str:
    """The Feedback tab as `c` sees it (its summary line and tables), as JSON text."""
    r = R.call(c, endpoint(cfg, "refresh")["fn_index"], [])
    assert r["success"], R.error_text(r)
    return json.dumps(r["output"]["data"], ensure_ascii=False)


def test_two_visitors_see_only_their_own_feedback_and_documents(public_app):
    url = public_app["url"]
    a, b = visitor(url), visitor(url)
    cookie_a, cookie_b = a.cookies.get(COOKIE), b.cookies.get(COOKIE)
    assert cookie_a and cookie_b and cookie_a != cookie_b
    cfg = R.config(a)
    assert upload(a, cfg, "a-notes.txt", "Amber's private note: the heron nests by the old mill.")["success"]
    assert upload(b, cfg, "b-notes.txt", "Basil's private note: the otter sleeps under the bridge.")["success"]
    assert [r[1] for r in doc_rows(a, cfg)] == ["a-notes.txt"]
    assert [r[1] for r in doc_rows(b, cfg)] == ["b-notes.txt"]

    chat_and_comment(a, cfg, "Where does the heron nest?", "amber-only comment 7731")
    chat_and_comment(b, cfg, "Where does the otter sleep?", "basil-only comment 4410")
    view_a, view_b = feedback_view(a, cfg), feedback_view(b, cfg)
    assert "Your feedback" in view_a and "Your feedback" in view_b
    assert "amber-only comment 7731" in view_a and "basil-only comment 4410" not in view_a
    assert "basil-only comment 4410" in view_b and "amber-only comment 7731" not in view_b

    # a reload in the same browser is the same visitor: the cookie is kept, the documents are still there
    r = a.get("")
    assert COOKIE not in r.headers.get("set-cookie", "") and a.cookies.get(COOKIE) == cookie_a
    assert [row[1] for row in doc_rows(a, cfg)] == ["a-notes.txt"]
    # a forged cookie (A's id under a made-up signature) names nobody: none of A's data; a page load replaces it
    forged_value = cookie_a.split(".")[0] + "." + "0" * 64
    forged = R.client(url)
    forged.headers["cookie"] = f"{COOKIE}={forged_value}"
    assert doc_rows(forged, cfg) == [] and "amber-only" not in feedback_view(forged, cfg)
    assert visitor(url, forged_value).cookies.get(COOKIE) not in (forged_value, cookie_a)
    # a client that keeps no cookie at all (a browser blocking them in the Space's iframe) is a visitor of its page
    # session only: it sees nothing of A's
    bare = R.client(url)
    assert doc_rows(bare, cfg) == [] and "amber-only" not in feedback_view(bare, cfg)

    with sqlite3.connect(public_app["db"]) as db:
        names = {n for (n,) in db.execute("select name from users")}
    assert all(n.startswith("visitor:") for n in names) and len(names) >= 2  # no local admin was made


def test_no_visitor_reaches_an_admin_endpoint(public_app):
    url, data = public_app["url"], public_app["data_dir"]
    for c in (visitor(url), R.client(url)):  # with its cookie, and without any
        assert_admin_endpoints_refuse(c, data)


def test_a_session_belongs_to_its_visitor(public_app):
    url = public_app["url"]
    a, b = visitor(url), visitor(url)
    cfg = R.config(a)
    chat = endpoint(cfg, "chat")["fn_index"]
    session = "pubsess0001"
    first = R.call(a, chat, ["Tell me about Quillfeather owls.", None, "plain", "off", "active", 0, 40], session_hash=session)
    assert first["success"], R.error_text(first)
    for other in (b, R.client(url)):  # another visitor, and a cookie-less client naming A's session
        stolen = R.call(other, chat, ["And now?", None, "plain", "off", "active", 0, 40], session_hash=session)
        assert stolen["status"] == 403 and "Quillfeather" not in stolen["body"]
        assert other.get("gradio_api/queue/data", params={"session_hash": session}).status_code == 403
        r = other.post("gradio_api/cancel", json={"session_hash": session, "fn_index": chat, "event_id": "x"})
        assert r.status_code == 403
    again = R.call(a, chat, ["Where do they nest?", None, "plain", "off", "active", 0, 40], session_hash=session)
    assert again["success"], R.error_text(again)
    assert [m["role"] for m in again["output"]["data"][1]] == ["user", "assistant"] * 2


def test_the_page_says_feedback_is_lost_at_restart(public_app):
    text = visitor(public_app["url"]).get("config").text
    assert "Feedback is lost when this Space restarts" in text and NOT_PERSISTENT.split(":")[0] in text
    assert str(public_app["data_dir"]) not in text and public_app["version"] not in text  # no paths, no registry


# ------------------------------------------------------------------------------------------------ real Chromium
@pytest.mark.browser
def test_two_browsers_two_visitors(public_app):
    from tests.test_browser import ARGS, CHROMIUM

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (`make test` installs it)")
    from playwright.sync_api import expect, sync_playwright

    url = public_app["url"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pages, cookies = [], []
            for _ in range(2):
                ctx = browser.new_context()
                page = ctx.new_page()
                page.goto(url)
                page.wait_for_selector("#message textarea")
                assert "Feedback is lost when this Space restarts" in page.locator("#not-persistent").inner_text()
                cookie = next(c for c in ctx.cookies() if c["name"] == COOKIE)
                assert cookie["httpOnly"]
                pages.append(page)
                cookies.append(cookie["value"])
            assert cookies[0] != cookies[1]
            first, second = pages

            def answers() -> int:
                with sqlite3.connect(public_app["db"]) as db:
                    return db.execute("select count(*) from messages where role = 'assistant'").fetchone()[0]

            before = answers()
            first.fill("#message textarea", "Hello from the first browser")
            first.press("#message textarea", "Enter")
            deadline = time.time() + 180
            while answers() == before and time.time() < deadline:  # stored once the answer is complete
                first.wait_for_timeout(250)
            assert answers() == before + 1
            first.reload()
            first.wait_for_selector("#message textarea")
            assert next(c for c in first.context.cookies() if c["name"] == COOKIE)["value"] == cookies[0]
            for page, answers in ((first, "1 answers"), (second, "0 answers")):
                page.get_by_role("tab", name="Feedback").click()  # the tab refreshes when selected
                expect(page.locator("p", has_text="Your feedback · ")).to_contain_text(answers, timeout=60_000)
        finally:
            browser.close()


# ------------------------------------------------------------------------------------------------ with HF OAuth
OAUTH_SECRET = secrets.token_hex(16)


@pytest.fixture(scope="module")
def oauth_app(tmp_path_factory, tokenizer):
    for mod in ("authlib", "itsdangerous"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed: install gradio[oauth] (pyproject asks for it)")
    root = tmp_path_factory.mktemp("oauth")
    storage = root / "storage"  # the Space's persistent storage (/data on Spaces)
    data = storage / "kaizen"  # where the app must put its data by itself (KAIZEN_DATA_DIR is not set)
    base, settings, version = admin_things(root, tokenizer, data)
    space = {"SYSTEM": "spaces", "SPACE_ID": "kaizen/test", "OAUTH_CLIENT_ID": "kaizen-test",
             "OAUTH_CLIENT_SECRET": OAUTH_SECRET, "OAUTH_SCOPES": "openid profile",
             "OPENID_PROVIDER_URL": "http://127.0.0.1:9"}  # never reached: nobody goes through the real login here
    from spaces.build import build

    bundle = build(root / "space")  # run as the Space runs it: its entry, which sets KAIZEN_PUBLIC=1 itself
    with running_app(data, base, [sys.executable, "space_app.py"], bundle, KAIZEN_ADMINS="alice",
                     KAIZEN_DATA_DIR="", KAIZEN_PERSISTENT_DIR=str(storage), **space) as server:
        server.update(version=version, storage=storage)
        yield server


def signed_in(url, name: str):
    """A visitor signed in with Hugging Face as `name`: the session cookie Gradio's /login/callback sets."""
    import itsdangerous

    info = {"access_token": "hf_oauth_token", "token_type": "bearer", "scope": "openid profile",
            "expires_at": int(time.time()) + 3600,
            "userinfo": {"preferred_username": name, "name": name.title(), "profile": f"https://huggingface.co/{name}",
                         "picture": ""}}
    key = hashlib.sha256((OAUTH_SECRET + "-v4").encode()).hexdigest()
    cookie = itsdangerous.TimestampSigner(key).sign(base64.b64encode(json.dumps({"oauth_info": info}).encode()))
    c = visitor(url)
    c.cookies.set("session", cookie.decode(), domain="127.0.0.1")
    return c


LOGIN_BUTTON = frozenset({"_check_login_status"})  # gr.LoginButton's page-load check of the login


def test_only_signed_in_admins_may_train_or_promote(oauth_app):
    url, data = oauth_app["url"], oauth_app["data_dir"]
    assert (oauth_app["storage"] / "kaizen" / "kaizen.db").exists()  # on the persistent storage
    anon, bob = visitor(url), signed_in(url, "bob")
    text = anon.get("config").text
    assert "Sign in with Hugging Face" in text and "Feedback is lost" not in text
    for c in (anon, bob):
        assert_admin_endpoints_refuse(c, data, also_ok=LOGIN_BUTTON)

    alice = signed_in(url, "alice")
    cfg = R.config(alice)
    eps = R.endpoints(cfg)
    promote = next(e for e in eps if "button:Promote:click" in e["label"])
    fill = next(e for e in eps if e["api_name"] == "quiet_admin_fill_the_adapters_tab")
    session = "alicepublic1"
    filled = R.call(alice, fill["fn_index"], [None, None], session_hash=session)  # what the page load does
    assert filled["success"] and oauth_app["version"] in json.dumps(filled["output"]["data"])
    before = registry_state(data)
    r = R.call(alice, promote["fn_index"], [oauth_app["version"], None], session_hash=session)
    assert r["success"] is True and "never checked by the gate" in R.error_text(r), R.error_text(r)  # asks first
    confirm = next(e for e in eps if "button:Yes, do it:click" in e["label"])
    r = R.call(alice, confirm["fn_index"], [oauth_app["version"], None, None], session_hash=session)
    assert r["success"] is True, R.error_text(r)
    assert (data / "adapters" / "ACTIVE").read_text().strip() == oauth_app["version"] != before["ACTIVE"]

    # the admin's Feedback tab shows every visitor's feedback; a signed-in user's only their own
    chat_and_comment(bob, cfg, "Where does the heron nest?", "bob-only comment 5521")
    assert "All users" in feedback_view(alice, cfg) and "bob-only comment 5521" in feedback_view(alice, cfg)
    view = feedback_view(signed_in(url, "carol"), cfg)
    assert "Your feedback" in view and "bob-only" not in view
    with sqlite3.connect(oauth_app["db"]) as db:
        roles = dict(db.execute("select name, role from users"))
    assert roles["alice"] == "admin" and roles["bob"] == "user"
