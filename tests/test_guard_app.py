"""An anonymous instance (no login file) on the real default model, attacked and pushed as issue 14 found it:
- a web page on another site sends writes (upload, queue join, the /v1 API): 403 with a sentence, nothing stored;
  the app's own page and clients that send no Origin (gradio_client, raw httpx) still work;
- one user asks past KAIZEN_USER_MAX_GENERATIONS (1 here): refused in words, nothing stored; free again after;
- the disk fills up (for real: kaizen.db at its KAIZEN_MAX_DB_MB cap, SQLite answers SQLITE_FULL): the user reads
  that the disk is full and nothing was saved, the operator's log has one line and no traceback.
The disk-full test runs last: it leaves the store full."""
from __future__ import annotations

import json
import sqlite3
import sys
import threading
import uuid

import pytest

from feedback.store import Store
from tests import raw_client as R
from tests.conftest import ROOT, running_app
from tests.test_store_full import fill_until_full

sys.path.insert(0, str(ROOT / "bench"))
import load_sessions as L  # noqa: E402

pytestmark = pytest.mark.slow
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def anon_app(tmp_path_factory, base_model_dir):
    data = tmp_path_factory.mktemp("guard") / "data"
    with running_app(data, base_model_dir, KAIZEN_USER_MAX_GENERATIONS="1", KAIZEN_MAX_NEW_TOKENS="160",
                     KAIZEN_MAX_DB_MB="1") as server:
        c = R.client(server["url"])
        server["chat"] = L.chat_endpoint(c)
        yield server


def user_messages(db) -> list[str]:
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT content FROM messages WHERE role = 'user' ORDER BY id")]


def join(c, fn_index: int, question: str, **headers):
    body = {"data": L.chat_data(fn_index, question), "fn_index": fn_index,
            "session_hash": uuid.uuid4().hex[:11], "event_data": None, "trigger_id": None}
    return c.post("gradio_api/queue/join", content=json.dumps(body).encode(),
                  headers={"content-type": "application/json", **headers})


def test_writes_from_another_site_are_refused_and_the_apps_own_still_work(anon_app):
    url, db, chat = anon_app["url"], anon_app["db"], anon_app["chat"]
    own = url.rstrip("/")
    c = R.client(url)
    before = user_messages(db)
    files = {"files": ("planted.txt", b"A page on another site planted this file.", "text/plain")}
    for headers in ({"origin": EVIL}, {"referer": EVIL + "/attack.html"}, {"origin": "null"}):
        r = c.post("gradio_api/upload", files=files, headers=headers)
        assert r.status_code == 403 and "another site" in r.json()["error"], (headers, r.status_code, r.text)
        r = join(c, chat, "Planted question from another site", **headers)
        assert r.status_code == 403 and "KAIZEN_ALLOWED_ORIGINS" in r.json()["error"]
    r = c.post("v1/chat/completions", headers={"origin": EVIL},
               json={"model": "kaizen", "messages": [{"role": "user", "content": "Planted API question"}]})
    assert r.status_code == 403
    assert user_messages(db) == before  # nothing of it stored

    r = c.post("gradio_api/upload", files=files, headers={"origin": own})  # the app's own page
    assert r.status_code == 200, r.text
    browser = R.client(url)
    browser.headers["origin"] = own  # what the app's own page sends with every write
    page = L.ask(browser, chat, "Hello from the app's own page", uuid.uuid4().hex[:11])
    assert page["success"], page
    from gradio_client import Client  # a CLI client: no Origin header

    out = Client(url, verbose=False).predict("Hello from gradio_client", "plain", "off", "active", api_name="/chat")
    assert out and "Hello from gradio_client" in user_messages(db)
    assert "Hello from the app's own page" in user_messages(db)


def test_answers_past_the_per_user_limit_are_refused_in_words_and_store_nothing(anon_app):
    url, db, chat = anon_app["url"], anon_app["db"], anon_app["chat"]
    running, first = threading.Event(), {}

    def long_answer():
        first.update(L.ask(R.client(url), chat, "Tell me a long story about a lighthouse keeper and the sea.",
                           uuid.uuid4().hex[:11], on_first_token=running.set))

    t = threading.Thread(target=long_answer)
    t.start()
    try:
        assert running.wait(300), "the first answer never started"
        second = L.ask(R.client(url), chat, "A second question while the first runs", uuid.uuid4().hex[:11])
        assert t.is_alive(), "the first answer ended before the second was asked: the test proves nothing"
    finally:
        t.join(600)
    warned = " ".join(second["warnings"])
    assert "running or waiting" in warned and "limit is 1 per user" in warned, second
    assert "A second question while the first runs" not in user_messages(db)  # nothing stored
    assert first["success"] and first["answer"]
    again = L.ask(R.client(url), chat, "A second question after the first", uuid.uuid4().hex[:11])
    assert again["success"] and not again["warnings"], again  # the place is free again
    assert "A second question after the first" in user_messages(db)


def test_a_full_disk_is_told_in_words_to_the_user_and_in_one_log_line_to_the_operator(anon_app):
    url, db, chat = anon_app["url"], anon_app["db"], anon_app["chat"]
    filler = Store(db, max_db_mb=1)  # another process filling the same disk, up to the same cap
    uid = filler.ensure_user("filler")
    conv = filler.new_conversation(uid, title="filler")
    assert fill_until_full(filler, uid, conv) > 0
    filler.close()
    log_file = anon_app["data_dir"] / "server.log"
    offset = len(log_file.read_text())
    before = user_messages(db)
    question = "Are you still there? " * 150  # a question needs pages the full store no longer has
    result = L.ask(R.client(url), chat, question, uuid.uuid4().hex[:11])
    warned = " ".join(result["warnings"])
    assert "the server's disk is full" in warned and "not saved" in warned, result
    assert user_messages(db) == before
    log = log_file.read_text()[offset:]
    assert log.count("the disk is full") == 1 and str(db) in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
