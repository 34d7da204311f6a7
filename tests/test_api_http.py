"""The OpenAI-compatible API over HTTP with real clients (the official `openai` SDK, httpx, LangChain) and the
real Answerer, store and routes, on a fake engine (tests/api_fakes.py): seconds, no model. The same on the real
model, with the app as a subprocess: tests/test_api_app.py."""
import json
import sqlite3

import httpx
import pytest

from tests.api_fakes import FakeEngine, make_api, serving

LOOPBACK = ("127.0.0.1", 50000)


@pytest.fixture
def api(tmp_path):
    from fastapi.testclient import TestClient

    app, kapi = make_api(tmp_path)
    client = TestClient(app, client=LOOPBACK)
    return {"app": app, "api": kapi, "http": client, "db": kapi.settings.db_path}


def sdk(http, key="none"):
    import openai

    return openai.OpenAI(base_url=str(http.base_url).rstrip("/") + "/v1", api_key=key, http_client=http, max_retries=0)


def rows(db, sql, *args):
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args)]


def count(db, table):
    return rows(db, f"select count(*) as n from {table}")[0]["n"]


def ask(http, content="What is 2+2?", key=None, **body):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = http.post("/v1/chat/completions", headers=headers,
                  json={"model": "kaizen", "messages": [{"role": "user", "content": content}], **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_openai_sdk_non_streaming_answer_is_stored_like_a_ui_answer(api):
    out = sdk(api["http"]).chat.completions.create(model="kaizen", messages=[
        {"role": "user", "content": "What is the capital of France?"}], extra_body={"template": "concise"})
    text = out.choices[0].message.content
    assert out.id.startswith("chatcmpl-") and "Echo:" in text and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens > 0 and out.usage.total_tokens == out.usage.prompt_tokens + \
        out.usage.completion_tokens
    ext = out.model_extra["kaizen"]
    [msg] = rows(api["db"], "select * from messages where role='assistant'")
    assert msg["id"] == ext["message_id"] and msg["content"] == text
    assert (msg["template"], msg["model"], msg["adapter"]) == ("concise", "fake-model", None)
    assert msg["latency_ms"] > 0 and msg["completion_tokens"] == out.usage.completion_tokens
    assert msg["prompt_tokens"] == out.usage.prompt_tokens
    [question] = rows(api["db"], "select * from messages where role='user'")
    assert question["content"] == "What is the capital of France?" and msg["parent_id"] == question["id"]
    user = rows(api["db"], "select u.name from users u join conversations c on c.user_id=u.id")[0]["name"]
    assert user == "local"  # anonymous mode, loopback client: the UI's user
    assert rows(api["db"], "select * from api_completions")[0]["message_id"] == msg["id"]


def test_openai_sdk_streams_and_reports_usage(api):
    stream = sdk(api["http"]).chat.completions.create(
        model="kaizen", messages=[{"role": "user", "content": "Tell me a joke"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    [msg] = rows(api["db"], "select * from messages where role='assistant'")
    assert msg["content"] == text and "joke" in text
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    assert final.model_extra["kaizen"]["message_id"] == msg["id"]


def test_models_list(api):
    api["api"].answerer.model.adapters["v0003-sft"] = "/nowhere"
    ids = [m.id for m in sdk(api["http"]).models.list()]
    assert ids == ["kaizen", "kaizen:base", "kaizen:v0003-sft"]
    assert api["http"].get("/v1/models/kaizen:base").json()["id"] == "kaizen:base"
    assert api["http"].get("/v1/models/gpt-4").status_code == 404


def test_model_picks_the_adapter_and_the_ab_test_routes(api):
    engine = api["api"].answerer.model
    engine.adapters.update({"v0003-sft": "/a", "v0004-sft": "/b"})
    engine.active = "v0003-sft"
    assert ask(api["http"], "one")["kaizen"]["adapter"] == "v0003-sft"
    assert ask(api["http"], "two", model="kaizen:base")["kaizen"]["adapter"] == "base"
    assert ask(api["http"], "three", model="kaizen:v0004-sft")["kaizen"]["adapter"] == "v0004-sft"
    api["api"].ab_state["experiment"] = {"version": "v0004-sft", "share": 0.999999, "started": ""}
    assert ask(api["http"], "four")["kaizen"]["adapter"] == "v0004-sft"  # this conversation is in the arm
    assert ask(api["http"], "five", model="kaizen:base")["kaizen"]["adapter"] == "base"  # explicit: honoured
    stored = [r["adapter"] for r in rows(api["db"], "select adapter from messages where role='assistant' order by id")]
    assert stored == ["v0003-sft", None, "v0004-sft", "v0004-sft", None]


def test_template_and_rag_from_headers(api):
    r = api["http"].post("/v1/chat/completions", headers={"X-Kaizen-Template": "concise", "X-Kaizen-Rag": "off"},
                         json={"model": "kaizen", "messages": [{"role": "user", "content": "hi"}]})
    assert r.json()["kaizen"]["template"] == "concise" and r.json()["kaizen"]["rag"] == "off"


@pytest.mark.parametrize("body,status,words", [
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
    ({"model": "kaizen:v0099-sft", "messages": [{"role": "user", "content": "hi"}]}, 404, "kaizen:base"),
    ({"model": "kaizen", "messages": []}, 400, "non-empty"),
    ({"model": "kaizen", "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
    ({"model": "kaizen", "messages": [{"role": "user", "content": "x" * 4001}]}, 400, "too long"),
    ({"model": "kaizen", "messages": [{"role": "user", "content": ""}]}, 400, "empty"),
    ({"model": "kaizen", "template": "nope", "messages": [{"role": "user", "content": "x"}]}, 400, "template"),
    ({"model": "kaizen", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "only text"),
])
def test_bad_requests_get_4xx_with_a_message_and_store_nothing(api, body, status, words):
    r = api["http"].post("/v1/chat/completions", json=body)
    assert r.status_code == status and words in r.json()["error"]["message"], r.text
    assert count(api["db"], "messages") == 0 and count(api["db"], "conversations") == 0


def test_not_json_and_oversized_bodies(api):
    r = api["http"].post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = api["http"].post("/v1/chat/completions", json={"model": "kaizen", "messages": [
        {"role": "user", "content": "x" * 2_000_000}]})
    assert r.status_code == 413  # the web guard's body cap, before the body is read whole
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        sdk(api["http"]).chat.completions.create(model="kaizen", messages=[{"role": "user", "content": " "}])
    assert "empty" in str(e.value)


def test_feedback_rating_correction_choice_land_against_the_right_message(api):
    http = api["http"]
    first = ask(http, "Name a colour", temperature=0.9, seed=1)
    again = ask(http, "Name a colour", temperature=0.9, seed=2)  # a regenerate: a sibling answer
    a, b = first["kaizen"]["message_id"], again["kaizen"]["message_id"]
    assert first["kaizen"]["question_id"] == again["kaizen"]["question_id"]
    assert count(api["db"], "messages") == 3  # one question, two answers
    decodings = [json.loads(r["decoding"]) for r in rows(api["db"], "select decoding from messages where id in (?, ?) "
                                                                     "order by id", a, b)]
    assert [(d["temperature"], d["seed"]) for d in decodings] == [(0.9, 1), (0.9, 2)]  # stored with each answer
    api["api"].answerer.model.adapters["v0009-sft"] = "/x"  # a second, different text for the choice
    third = ask(http, "Name a colour", model="kaizen:v0009-sft")
    c = third["kaizen"]["message_id"]

    def post(**body):
        return http.post("/v1/feedback", json=body)

    r = post(id=first["id"], rating=-1, reasons=["wrong"], comment="not a colour")
    assert r.status_code == 200 and r.json()["message_id"] == a
    assert post(id=first["id"], rating=0).status_code == 200
    assert post(id=again["id"], rating=1).status_code == 200
    assert post(id=again["id"], correction="Blue.").status_code == 200
    assert post(id=third["id"], choice=[first["id"]]).status_code == 200
    ratings = rows(api["db"], "select message_id, value, reasons, comment from ratings order by id")
    assert ratings == [{"message_id": a, "value": -1, "reasons": '["wrong"]', "comment": "not a colour"},
                       {"message_id": a, "value": 0, "reasons": "[]", "comment": ""},
                       {"message_id": b, "value": 1, "reasons": "[]", "comment": ""}]
    [edit] = rows(api["db"], "select * from edits")
    assert (edit["message_id"], edit["edited"], edit["original"]) == (b, "Blue.", again["choices"][0]["message"]
                                                                       ["content"])
    [choice] = rows(api["db"], "select * from choices")
    assert choice["picked_id"] == c and json.loads(choice["candidates"]) == [c, a]
    assert choice["prompt_message_id"] == first["kaizen"]["question_id"]
    # refused events write nothing
    before = {t: count(api["db"], t) for t in ("ratings", "edits", "choices")}
    assert post(id="chatcmpl-unknown", rating=1).status_code == 404
    assert post(id=again["id"], correction="Blue.").status_code == 400  # the same text again: no change
    assert post(id=third["id"], choice=["chatcmpl-unknown"]).status_code == 404
    assert post(id=first["id"], rating=5).status_code == 400
    assert post(id=first["id"]).status_code == 400
    assert {t: count(api["db"], t) for t in before} == before
    stats = http.get("/v1/feedback/stats").json()
    assert stats and json.dumps(stats)


def test_choice_between_the_same_text_is_refused(api):
    one, two = ask(api["http"], "same"), ask(api["http"], "same")  # greedy: the same answer twice
    r = api["http"].post("/v1/feedback", json={"id": one["id"], "choice": [two["id"]]})
    assert r.status_code == 400 and "same text" in r.json()["error"]["message"]
    assert count(api["db"], "choices") == 0


def test_resent_history_is_one_conversation(api):
    http = api["http"]
    one = ask(http, "Hi there")
    history = [{"role": "user", "content": "Hi there"},
               {"role": "assistant", "content": one["choices"][0]["message"]["content"]},
               {"role": "user", "content": "And then?"}]
    two = http.post("/v1/chat/completions", json={"model": "kaizen", "messages": history}).json()
    assert two["kaizen"]["conversation_id"] == one["kaizen"]["conversation_id"]
    msgs = rows(api["db"], "select id, parent_id, role, content, model from messages order by id")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]  # nothing stored twice
    assert [m["parent_id"] for m in msgs] == [None, msgs[0]["id"], msgs[1]["id"], msgs[2]["id"]]
    engine = api["api"].answerer.model
    assert [m["content"] for m in engine.calls[-1]["messages"][-3:]] == \
        [history[0]["content"], history[1]["content"], "And then?"]  # the model got the whole history
    # also on another subject: an API client sends the context it wants (few-shot examples, say); the chat's
    # new-subject rule (agent/routing.py keeps_history) is not applied to it
    unrelated = history[:2] + [{"role": "user", "content": "Who wrote Romeo and Juliet?"}]
    http.post("/v1/chat/completions", json={"model": "kaizen", "messages": unrelated}).raise_for_status()
    assert [m["content"] for m in engine.calls[-1]["messages"][-3:]] == \
        [history[0]["content"], history[1]["content"], "Who wrote Romeo and Juliet?"]
    [latest] = rows(api["db"], "select context_messages from messages where role='assistant' order by id desc limit 1")
    assert latest["context_messages"] == 2
    # a client that edited the earlier answer: its text is stored as client history, the question follows it
    edited = [history[0], {"role": "assistant", "content": "My own words"}, history[2]]
    three = http.post("/v1/chat/completions", json={"model": "kaizen", "messages": edited}).json()
    assert three["kaizen"]["conversation_id"] == one["kaizen"]["conversation_id"]
    msgs = rows(api["db"], "select id, parent_id, role, content, model from messages order by id")
    client = [m for m in msgs if m["content"] == "My own words"][0]
    assert client["model"] == "client" and client["parent_id"] == msgs[0]["id"]
    # an explicit conversation_id keeps chats with the same opening apart
    other = ask(http, "Hi there", conversation_id="chat-2")
    assert other["kaizen"]["conversation_id"] != one["kaizen"]["conversation_id"]
    assert ask(http, "Hi there", conversation_id="chat-2")["kaizen"]["conversation_id"] == \
        other["kaizen"]["conversation_id"]


# -- auth ---------------------------------------------------------------------------------------------
def make_key(api, name, role=None):
    from feedback import api_store

    return api_store.create_key(api["api"].store, api["api"].store.ensure_user(name, role))


def test_without_keys_only_loopback_clients_are_served(api):
    from fastapi.testclient import TestClient

    remote = TestClient(api["app"], client=("10.1.2.3", 40000))
    r = remote.post("/v1/chat/completions", json={"model": "kaizen", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 403 and "loopback" in r.json()["error"]["message"]
    assert remote.get("/v1/models").status_code == 403
    assert count(api["db"], "messages") == 0
    # any bearer token is fine while no key exists (clients like Open WebUI always send one)
    assert api["http"].get("/v1/models", headers={"Authorization": "Bearer sk-whatever"}).status_code == 200


def test_once_a_key_exists_every_request_needs_one(api):
    from fastapi.testclient import TestClient

    key = make_key(api, "alice")
    assert api["http"].get("/v1/models").status_code == 401
    assert api["http"].get("/v1/models", headers={"Authorization": "Bearer kz-wrong"}).status_code == 401
    remote = TestClient(api["app"], client=("10.1.2.3", 40000))
    out = ask(remote, "hello", key=key)
    owner = rows(api["db"], "select u.name from messages m join conversations c on c.id=m.conversation_id "
                            "join users u on u.id=c.user_id where m.id=?", out["kaizen"]["message_id"])
    assert owner == [{"name": "alice"}]
    stored = rows(api["db"], "select key_hash, prefix from api_keys")[0]
    assert key not in json.dumps(stored) and stored["prefix"] == key[:9]  # only the hash is kept


def test_a_second_users_key_cannot_touch_the_first_users_completion(api):
    alice, bob = make_key(api, "alice"), make_key(api, "bob")
    out = ask(api["http"], "Alice's question", key=alice)
    before = {t: count(api["db"], t) for t in ("ratings", "edits", "choices")}
    as_bob = {"Authorization": f"Bearer {bob}"}
    for body in ({"rating": 1}, {"rating": 0}, {"correction": "hacked"}):
        r = api["http"].post("/v1/feedback", headers=as_bob, json={"id": out["id"], **body})
        assert r.status_code == 404, r.text
    bobs = ask(api["http"], "Bob's question", key=bob)
    r = api["http"].post("/v1/feedback", headers=as_bob, json={"id": bobs["id"], "choice": [out["id"]]})
    assert r.status_code == 404
    assert {t: count(api["db"], t) for t in before} == before
    r = api["http"].post("/v1/feedback", headers={"Authorization": f"Bearer {alice}"}, json={"id": out["id"],
                                                                                              "rating": 1})
    assert r.status_code == 200
    # and the stats are the caller's own (everyone's only for an admin)
    assert api["http"].get("/v1/feedback/stats", headers=as_bob).json()["totals"]["ratings"] == 0
    assert api["http"].get("/v1/feedback/stats?all=1", headers=as_bob).status_code == 403


def test_completion_lookup_is_scoped_to_the_caller(api):
    from feedback import api_store
    from feedback.store import NotFoundError

    alice = make_key(api, "alice")
    out = ask(api["http"], "q", key=alice)
    store = api["api"].store
    with pytest.raises(NotFoundError):
        api_store.message_of(store, out["id"], store.ensure_user("bob"))
    assert api_store.message_of(store, out["id"], store.ensure_user("alice")) == out["kaizen"]["message_id"]


def test_a_public_space_needs_a_key_even_from_loopback(tmp_path):
    """On a Space every request arrives through its proxy, which may look like loopback: no caller there is the
    local admin. Without a key the API refuses (nothing stored); with one the key's user, not an admin, answers."""
    from fastapi.testclient import TestClient

    from feedback import api_store

    app, kapi = make_api(tmp_path, public=True)
    http = TestClient(app, client=LOOPBACK)
    r = http.post("/v1/chat/completions", json={"model": "kaizen", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and "public Space" in r.json()["error"]["message"]
    assert http.get("/v1/models").status_code == 401
    assert count(kapi.settings.db_path, "messages") == 0
    key = api_store.create_key(kapi.store, kapi.store.ensure_user("hf-visitor"))
    ask(http, key=key)
    [row] = rows(kapi.settings.db_path, "select u.name, u.role from users u join conversations c on c.user_id=u.id")
    assert row["name"] == "hf-visitor" and row["role"] != "admin"


def test_login_mode_needs_a_key_of_a_user_in_the_users_file(tmp_path):
    from fastapi.testclient import TestClient

    from feedback import api_store, auth

    users = tmp_path / "users.json"
    auth.add_user(users, "carol", "password123", iterations=1000)
    app, kapi = make_api(tmp_path, auth_file=str(users))
    http = TestClient(app, client=LOOPBACK)
    assert http.get("/v1/models").status_code == 401  # loopback is no excuse in login mode
    key = api_store.create_key(kapi.store, kapi.store.ensure_user("carol"))
    dave = api_store.create_key(kapi.store, kapi.store.ensure_user("dave"))  # not in the users file
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {dave}"}).status_code == 401
    api_store.revoke_keys(kapi.store, kapi.store.ensure_user("carol"))
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401


# -- real sockets: streaming clients and disconnects -------------------------------------------------------
def stored_answer(db, wait_s: float = 10.0) -> dict:
    """The one stored answer, once it is there (an answer is stored when its generation ends)."""
    import time

    deadline = time.time() + wait_s
    while time.time() < deadline and not rows(db, "select * from messages where role='assistant'"):
        time.sleep(0.05)
    [msg] = rows(db, "select * from messages where role='assistant'")
    return msg


def test_a_client_disconnect_stops_the_generation(tmp_path):
    engine = FakeEngine(delay=0.02, endless=True)
    app, kapi = make_api(tmp_path, engine=engine, max_new_tokens=2000)  # ~40 s if nothing stopped it
    with serving(app) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json={
                "model": "kaizen", "stream": True, "messages": [{"role": "user", "content": "go on forever"}]}) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any("more" in g or "Echo" in g for g in got)
        msg = stored_answer(kapi.settings.db_path)
    assert msg["completion_tokens"] < 500, "the generation went on after the client left"
    assert msg["content"].startswith("Echo:")  # what was generated is stored


def test_langchain_chat_openai_streams(tmp_path):
    from langchain_openai import ChatOpenAI

    app, kapi = make_api(tmp_path)
    with serving(app) as url:
        llm = ChatOpenAI(base_url=url + "/v1", api_key="none", model="kaizen", max_retries=0,
                         extra_body={"template": "concise"})
        pieces = [c.content for c in llm.stream("Why is the sky blue?")]
    assert len([p for p in pieces if p]) > 2 and "Echo:" in "".join(pieces)
    [msg] = rows(kapi.settings.db_path, "select * from messages where role='assistant'")
    assert msg["content"] == "".join(pieces) and msg["template"] == "concise"


def test_a_non_streaming_client_that_gives_up_stops_the_generation(tmp_path):
    engine = FakeEngine(delay=0.02, endless=True)
    app, kapi = make_api(tmp_path, engine=engine, max_new_tokens=2000)
    with serving(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", timeout=httpx.Timeout(5, read=0.5), json={
                "model": "kaizen", "messages": [{"role": "user", "content": "go on forever"}]})
        msg = stored_answer(kapi.settings.db_path)
    assert msg["completion_tokens"] < 500, "the generation went on after the client left"


def test_a_template_dropped_into_the_data_dir_is_usable_at_once(api):
    assert "pirate" not in api["api"].template_names()
    folder = api["api"].settings.templates_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pirate.yaml").write_text("name: pirate\nsystem: Talk like a pirate.\nuser: '{question}'\n")
    assert ask(api["http"], "hello", template="pirate")["kaizen"]["template"] == "pirate"


def test_feedback_by_conversation_id_and_answer_text_stays_with_the_caller(api):
    alice, bob = make_key(api, "alice"), make_key(api, "bob")
    out = ask(api["http"], "Which city?", key=alice, conversation_id="owui-chat-7")
    text = out["choices"][0]["message"]["content"]
    body = {"conversation_id": "owui-chat-7", "answer": text + "\n", "rating": -1, "reasons": ["wrong"]}
    as_bob = api["http"].post("/v1/feedback", json=body, headers={"Authorization": f"Bearer {bob}"})
    assert as_bob.status_code == 404 and count(api["db"], "ratings") == 0  # bob's thread of that id is not alice's
    r = api["http"].post("/v1/feedback", json=body, headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 200 and r.json()["message_id"] == out["kaizen"]["message_id"] and r.json()["id"] == \
        out["id"]
    wrong = {**body, "answer": "an answer never given"}
    assert api["http"].post("/v1/feedback", json=wrong, headers={"Authorization": f"Bearer {alice}"}).status_code \
        == 404
    assert count(api["db"], "ratings") == 1


def test_a_grounded_answer_carries_its_sources_and_searches_only_the_callers_documents(tmp_path):
    from fastapi.testclient import TestClient

    from feedback import api_store
    from tests.api_fakes import FakeKB

    kb = FakeKB()
    app, kapi = make_api(tmp_path, kb=kb)
    http = TestClient(app, client=LOOPBACK)
    key = api_store.create_key(kapi.store, kapi.store.ensure_user("alice"))
    out = ask(http, "What does the warranty cover?", key=key, rag="on")
    want = [{"doc_id": "doc-1", "file": "warranty.md", "chunk": 0, "score": 0.9, "shared": False}]
    assert out["kaizen"]["sources"] == want and out["kaizen"]["used_rag"] is True
    assert out["kaizen"]["template"] == "grounded"  # as in the UI: sources switch to the grounded template
    [msg] = rows(kapi.settings.db_path, "select sources, template from messages where role='assistant'")
    assert json.loads(msg["sources"]) == want and msg["template"] == "grounded"
    assert kb.owners == ["alice"]  # retrieval saw the caller's documents, nobody else's
    streamed = [json.loads(line[6:]) for line in http.post("/v1/chat/completions", headers={
        "Authorization": f"Bearer {key}"}, json={"model": "kaizen", "stream": True, "rag": "on", "messages": [
            {"role": "user", "content": "And the battery?"}]}).text.splitlines()
        if line.startswith("data: {")]
    assert [c["kaizen"]["sources"] for c in streamed if c["choices"] and c["choices"][0]["finish_reason"]] == [want]
    off = ask(http, "Hello", key=key, rag="off")
    assert off["kaizen"]["sources"] == [] and off["kaizen"]["used_rag"] is False


def test_registry_candidates_are_for_admins_as_in_the_adapters_tab(api):
    class Registry:  # one candidate version in the registry, not attached
        def list(self):
            return [{"version": "v0005-sft", "state": "candidate", "kind": "lora"},
                    {"version": "v0004-sft", "state": "retired", "kind": "lora"}]

        def get(self, version):
            return {"version": version, "folder": "/nowhere", "kind": "lora"}

        def validate(self, folder):
            return {}

    api["api"].registry = Registry()
    bob = make_key(api, "bob")  # a user (no login mode: `kaizen users key` makes users)
    as_bob = {"Authorization": f"Bearer {bob}"}
    ids = [m["id"] for m in api["http"].get("/v1/models", headers=as_bob).json()["data"]]
    assert ids == ["kaizen", "kaizen:base"]
    r = api["http"].post("/v1/chat/completions", headers=as_bob, json={
        "model": "kaizen:v0005-sft", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and count(api["db"], "messages") == 0
    admin = make_key(api, "root", "admin")
    as_admin = {"Authorization": f"Bearer {admin}"}
    ids = [m["id"] for m in api["http"].get("/v1/models", headers=as_admin).json()["data"]]
    assert ids == ["kaizen", "kaizen:base", "kaizen:v0005-sft"]  # the retired one is not offered
    out = ask(api["http"], "hi", key=admin, model="kaizen:v0005-sft")
    assert out["kaizen"]["adapter"] == "v0005-sft" and "v0005-sft" in api["api"].answerer.model.adapters

