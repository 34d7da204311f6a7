"""The OpenAI-compatible API of the real app (`kaizen serve` as a subprocess, the real default model), reached the
way its users reach it: the official `openai` SDK, httpx and LangChain's ChatOpenAI, with API keys made by
`kaizen users key`. The same routes on a fake engine, in seconds: tests/test_api_http.py."""
import json
import os
import sqlite3
import subprocess
import sys

import httpx
import pytest

from tests.conftest import PARIS_QUESTION, ROOT, running_app

pytestmark = pytest.mark.slow


def kaizen(data, *args, check=True, **env_extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "KAIZEN_DATA_DIR": str(data)}
    env.pop("KAIZEN_AUTH_FILE", None)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=check)


@pytest.fixture(scope="module")
def server(tmp_path_factory, base_model_dir):
    data = tmp_path_factory.mktemp("apidata")
    keys = {}
    for name in ("alice", "bob"):
        out = kaizen(data, "users", "key", name)
        keys[name] = out.stdout.strip()
        assert keys[name].startswith("kz-") and "shown only now" in out.stderr
    with running_app(data, base_model_dir, KAIZEN_MAX_NEW_TOKENS="24") as srv:
        srv["keys"] = keys
        srv["v1"] = srv["url"] + "v1"
        yield srv


def client(server, who="alice"):
    import openai

    return openai.OpenAI(base_url=server["v1"], api_key=server["keys"][who], max_retries=0)


def rows(db, sql, *args):
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args)]


def counts(db) -> dict:
    return {t: rows(db, f"select count(*) as n from {t}")[0]["n"] for t in ("messages", "ratings", "edits",
                                                                           "choices")}


def test_openai_sdk_answers_and_streams_on_the_real_model(server):
    out = client(server).chat.completions.create(model="kaizen", messages=[{"role": "user", "content": PARIS_QUESTION}],
                                                 extra_body={"rag": "off"})
    text = out.choices[0].message.content
    assert "Paris" in text and out.id.startswith("chatcmpl-") and out.usage.completion_tokens > 0
    [msg] = rows(server["db"], "select * from messages where id=?", out.model_extra["kaizen"]["message_id"])
    assert msg["content"] == text and msg["template"] == "plain" and msg["adapter"] is None
    assert msg["completion_tokens"] == out.usage.completion_tokens and msg["latency_ms"] > 0
    owner = rows(server["db"], "select u.name from conversations c join users u on u.id=c.user_id where c.id=?",
                 msg["conversation_id"])
    assert owner == [{"name": "alice"}]

    stream = client(server).chat.completions.create(
        model="kaizen", messages=[{"role": "user", "content": "Name three colours."}], stream=True,
        stream_options={"include_usage": True}, extra_body={"rag": "off"})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 2, "the answer must arrive as a stream"
    assert chunks[-1].usage.completion_tokens > 0
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    [msg] = rows(server["db"], "select * from messages where id=?", final.model_extra["kaizen"]["message_id"])
    assert msg["content"] == "".join(pieces)


def test_models_list(server):
    ids = [m.id for m in client(server).models.list()]
    assert ids[:2] == ["kaizen", "kaizen:base"]


def test_feedback_through_the_api_lands_in_sqlite_and_in_the_export(server, tmp_path):
    sdk = client(server)
    answers = []
    for seed in range(1, 8):  # two different sampled answers to one question, for a choice
        out = sdk.chat.completions.create(model="kaizen", messages=[{"role": "user", "content": "Say something kind."}],
                                          temperature=1.0, seed=seed, extra_body={"rag": "off"})
        if all(out.choices[0].message.content.strip() != a.choices[0].message.content.strip() for a in answers):
            answers.append(out)
        if len(answers) == 2:
            break
    first, second = answers
    ids = [a.model_extra["kaizen"]["message_id"] for a in answers]
    assert first.model_extra["kaizen"]["question_id"] == second.model_extra["kaizen"]["question_id"]
    auth = {"Authorization": f"Bearer {server['keys']['alice']}"}

    def post(**body):
        r = httpx.post(server["v1"] + "/feedback", json=body, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    assert post(id=first.id, rating=-1, reasons=["unhelpful"], comment="too vague")["message_id"] == ids[0]
    post(id=second.id, correction="You are doing great, and your work matters.")
    post(id=second.id, choice=[first.id])
    assert rows(server["db"], "select message_id, value, comment from ratings") == [
        {"message_id": ids[0], "value": -1, "comment": "too vague"}]
    assert rows(server["db"], "select message_id, edited from edits") == [
        {"message_id": ids[1], "edited": "You are doing great, and your work matters."}]
    [choice] = rows(server["db"], "select * from choices")
    assert choice["picked_id"] == ids[1] and sorted(json.loads(choice["candidates"])) == sorted(ids)
    stats = httpx.get(server["v1"] + "/feedback/stats", headers=auth, timeout=30).json()
    assert stats["totals"]["ratings"] == 1

    out = kaizen(server["data_dir"], "feedback", "export", "--out", str(tmp_path / "export"))
    files = {p.name: p.read_text() for p in (tmp_path / "export").glob("*.jsonl")}
    text = "".join(files.values())
    assert "You are doing great, and your work matters." in text, out.stdout
    # the rated/rejected answer is in DPO/KTO rows (their texts read as JSON: a newline in it is escaped in the file)
    texts = [m["content"] for line in text.splitlines() if line.strip() for value in json.loads(line).values()
             if isinstance(value, list) for m in value if isinstance(m, dict) and "content" in m]
    assert any(first.choices[0].message.content.strip()[:20] in t for t in texts)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["events"]["total"] >= 3


def test_another_users_key_cannot_rate_and_no_key_is_refused(server):
    out = client(server, "alice").chat.completions.create(
        model="kaizen", messages=[{"role": "user", "content": "Alice asks: what is 2+2?"}], extra_body={"rag": "off"})
    before = counts(server["db"])
    bob = {"Authorization": f"Bearer {server['keys']['bob']}"}
    for body in ({"rating": 1}, {"correction": "changed by bob"}):
        r = httpx.post(server["v1"] + "/feedback", json={"id": out.id, **body}, headers=bob, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["message"]
    assert counts(server["db"]) == before
    r = httpx.post(server["v1"] + "/chat/completions", json={"model": "kaizen", "messages": [
        {"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]  # keys exist: one is needed


def test_bad_requests_get_4xx_with_a_message(server):
    import openai

    sdk = client(server)
    before = counts(server["db"])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="too long"):
        sdk.chat.completions.create(model="kaizen", messages=[{"role": "user", "content": "x" * 4001}])
    with pytest.raises(openai.BadRequestError, match="role"):
        sdk.chat.completions.create(model="kaizen", messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}])
    with pytest.raises(openai.BadRequestError, match="non-empty"):
        sdk.chat.completions.create(model="kaizen", messages=[])
    assert counts(server["db"]) == before


def test_langchain_chat_openai_streams_from_the_app(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server["v1"], api_key=server["keys"]["bob"], model="kaizen", max_retries=0,
                     extra_body={"rag": "off"})
    pieces = [c.content for c in llm.stream(PARIS_QUESTION)]
    assert len([p for p in pieces if p]) > 2 and "Paris" in "".join(pieces)


def test_api_only_server_answers_and_stays_on_loopback_without_keys(tmp_path, base_model_dir):
    import time

    from tests.conftest import free_port

    data, port = tmp_path / "data", free_port()
    data.mkdir()
    env = {**os.environ, "KAIZEN_DATA_DIR": str(data), "KAIZEN_BASE_MODEL": str(base_model_dir),
           "KAIZEN_PORT": str(port), "KAIZEN_HOST": "0.0.0.0", "KAIZEN_MAX_NEW_TOKENS": "16"}
    for k in ("KAIZEN_AUTH_FILE", "GRADIO_SERVER_PORT", "GRADIO_SERVER_NAME"):
        env.pop(k, None)
    with open(data / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--api-only"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.time() + 300
            while True:
                assert proc.poll() is None, (data / "server.log").read_text()[-3000:]
                try:
                    if httpx.get(url + "/", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    assert time.time() < deadline, "the API did not start"
                    time.sleep(1)
            import openai

            sdk = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
            out = sdk.chat.completions.create(model="kaizen:base",
                                              messages=[{"role": "user", "content": PARIS_QUESTION}])
            assert out.choices[0].message.content and out.usage.completion_tokens > 0
            assert "listens on 127.0.0.1 only" in (data / "server.log").read_text()
            assert "gradio" not in httpx.get(url + "/", timeout=5).text.lower()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_login_mode_the_api_key_and_the_ui_login_are_one_user(tmp_path, base_model_dir):
    from gradio_client import Client

    from feedback import auth

    data, users = tmp_path / "data", tmp_path / "users.json"
    auth.add_user(users, "carol", "carols-password", "user", iterations=1000)
    key = kaizen(data, "users", "key", "carol", KAIZEN_AUTH_FILE=str(users)).stdout.strip()
    with running_app(data, base_model_dir, KAIZEN_AUTH_FILE=str(users), KAIZEN_MAX_NEW_TOKENS="12") as srv:
        v1 = srv["url"] + "v1"
        r = httpx.get(v1 + "/models", timeout=30)
        assert r.status_code == 401  # login mode: a loopback client needs a key too
        import openai

        out = openai.OpenAI(base_url=v1, api_key=key, max_retries=0).chat.completions.create(
            model="kaizen", messages=[{"role": "user", "content": "Hello from the API"}], extra_body={"rag": "off"})
        ui = Client(srv["url"], auth=("carol", "carols-password"), verbose=False)
        ui.predict("Hello from the UI", "plain", "off", "active", api_name="/chat")
        owners = rows(srv["db"], "select distinct u.name, u.role from messages m join conversations c "
                                 "on c.id=m.conversation_id join users u on u.id=c.user_id")
        assert owners == [{"name": "carol", "role": "user"}]
        assert len(rows(srv["db"], "select * from messages where role='assistant'")) == 2
        assert out.choices[0].message.content
