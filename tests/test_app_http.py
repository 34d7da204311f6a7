"""The app as a user's program would reach it: a subprocess on a free port and a real HTTP client."""
import sqlite3

import pytest

from tests.conftest import PARIS_QUESTION

pytestmark = pytest.mark.slow


def test_chat_endpoint_streams_a_reply(app_server):
    from gradio_client import Client

    client = Client(app_server["url"], verbose=False)
    job = client.submit(PARIS_QUESTION, "plain", "off", "active", api_name="/chat")
    updates = [u for u in job]
    chat, box, status = job.result()
    assert len(updates) > 2, "the reply must arrive as a stream of updates"
    answer = chat[-1]["content"][0]["text"]
    assert chat[-1]["role"] == "assistant" and "Paris" in answer
    assert box == "" and status == ""
    with sqlite3.connect(app_server["db"]) as db:
        row = db.execute("select template, model, adapter, content, completion_tokens from messages "
                         "where role='assistant' and content=?", (answer,)).fetchone()
    assert row is not None and row[0] == "plain" and row[2] is None and row[4] > 0


def test_oversized_message_is_refused_and_stores_nothing(app_server):
    from gradio_client import Client

    client = Client(app_server["url"], verbose=False)
    with sqlite3.connect(app_server["db"]) as db:
        before = db.execute("select count(*) from messages").fetchone()[0]
    chat, box, status = client.predict("y" * 5000, "plain", "off", "active", api_name="/chat")
    assert "too long" in status and box == "y" * 5000  # the text is given back, not lost
    with sqlite3.connect(app_server["db"]) as db:
        assert db.execute("select count(*) from messages").fetchone()[0] == before


def test_app_is_network_silent(app_server):
    import json
    import urllib.request

    config = json.load(urllib.request.urlopen(app_server["url"] + "config", timeout=10))
    assert config["analytics_enabled"] is False
    assert not config.get("share_url")
    log = (app_server["data_dir"] / "server.log").read_text()
    assert "gradio.live" not in log
