"""The API's pure logic (web/schema.py): request checks, model names, ids, threading. Milliseconds."""
import pytest

from web import schema as s
from web.schema import ApiError

KW = dict(versions=["v0002-sft"], templates=["plain", "concise", "grounded"], default_template="plain",
          max_input_chars=100, max_answer_chars=200, max_new_tokens=64)


def chat(**body):
    return s.check_chat({"model": "kaizen", "messages": [{"role": "user", "content": "hi"}], **body}, **KW)


def refused(status=400, **body) -> str:
    with pytest.raises(ApiError) as e:
        s.check_chat(body, **KW)
    assert e.value.status == status
    assert e.value.body()["error"]["message"]
    return e.value.message


def test_model_names():
    assert s.parse_model("kaizen", []) == "default"
    assert s.parse_model("kaizen:base", []) is None
    assert s.parse_model("kaizen:v0002-sft", ["v0002-sft"]) == "v0002-sft"
    for name in ("gpt-4o", "kaizen:v0009-sft", "kaizen:", "Kaizen"):
        with pytest.raises(ApiError) as e:
            s.parse_model(name, ["v0002-sft"])
        assert e.value.status == 404 and e.value.code == "model_not_found" and "kaizen:v0002-sft" in e.value.message
    assert s.model_ids(["v0002-sft"]) == ["kaizen", "kaizen:base", "kaizen:v0002-sft"]


def test_a_good_request():
    r = s.check_chat({"model": "kaizen:base", "stream": True, "stream_options": {"include_usage": True},
                      "max_tokens": 999, "temperature": 0.5, "seed": 3, "template": "concise", "rag": "off",
                      "conversation_id": 42, "user": "ignored", "frequency_penalty": 0,
                      "messages": [{"role": "system", "content": "be nice"},
                                   {"role": "assistant", "content": "Hello!"},
                                   {"role": "user", "content": [{"type": "text", "text": " What is "},
                                                                {"type": "text", "text": "2+2? "}]}]}, **KW)
    assert r.adapter is None and r.stream and r.include_usage
    assert r.max_tokens == 64  # capped at the server's max_new_tokens
    assert r.decoding == {"temperature": 0.5, "seed": 3}
    assert (r.template, r.rag, r.conversation_id) == ("concise", "off", "42")
    assert r.question == "What is 2+2?" and r.history == [{"role": "assistant", "content": "Hello!"}]
    assert r.system == ["be nice"]


def test_consecutive_answers_are_one_turn():
    r = chat(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "part one"},
                       {"role": "assistant", "content": "part two"}, {"role": "user", "content": "q2"}])
    assert r.history == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "part one\n\npart two"}]


def test_headers_pick_template_rag_and_conversation():
    h = {"x-kaizen-template": "grounded", "x-kaizen-rag": "on", "x-kaizen-conversation": "c1"}
    r = s.check_chat({"model": "kaizen", "messages": [{"role": "user", "content": "q"}]}, headers=h, **KW)
    assert (r.template, r.rag, r.conversation_id) == ("grounded", "on", "c1")
    r = s.check_chat({"model": "kaizen", "template": "plain", "messages": [{"role": "user", "content": "q"}]},
                     headers=h, **KW)
    assert r.template == "plain"  # the body wins


def test_bad_requests_are_4xx_with_a_message():
    assert "model" in refused(messages=[{"role": "user", "content": "hi"}])
    assert refused(404, model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert "non-empty" in refused(model="kaizen", messages=[])
    assert "non-empty" in refused(model="kaizen")
    assert "role 'tool'" in refused(model="kaizen", messages=[{"role": "tool", "content": "x"}])
    assert "role None" in refused(model="kaizen", messages=[{"content": "x"}])
    assert "too long" in refused(model="kaizen", messages=[{"role": "user", "content": "x" * 101}])
    assert "too long" in refused(model="kaizen", messages=[{"role": "assistant", "content": "x" * 201},
                                                           {"role": "user", "content": "q"}])
    assert "empty" in refused(model="kaizen", messages=[{"role": "user", "content": "   "}])
    assert "last message" in refused(model="kaizen", messages=[{"role": "user", "content": "q"},
                                                               {"role": "assistant", "content": "a"}])
    assert "only text" in refused(model="kaizen", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:"}}]}])
    assert "unknown template" in refused(model="kaizen", template="nope", messages=[{"role": "user", "content": "q"}])
    assert "rag" in refused(model="kaizen", rag="maybe", messages=[{"role": "user", "content": "q"}])
    assert "`n`" in refused(model="kaizen", n=2, messages=[{"role": "user", "content": "q"}])
    assert "temperature" in refused(model="kaizen", temperature="hot", messages=[{"role": "user", "content": "q"}])
    assert "temperature" in refused(model="kaizen", temperature=3, messages=[{"role": "user", "content": "q"}])
    assert "max_tokens" in refused(model="kaizen", max_tokens=0, messages=[{"role": "user", "content": "q"}])
    assert "stream" in refused(model="kaizen", stream="yes", messages=[{"role": "user", "content": "q"}])
    assert "conversation_id" in refused(model="kaizen", conversation_id="x" * 201,
                                        messages=[{"role": "user", "content": "q"}])
    assert "too many" in refused(model="kaizen", messages=[{"role": "user", "content": "q"}] * 501)
    with pytest.raises(ApiError):
        s.check_chat(["not", "an", "object"], **KW)


def test_rag_modes_match_the_answerer():
    from agent.chat import RAG_MODES

    assert s.RAG_MODES == RAG_MODES


def test_completion_ids_are_unique():
    ids = {s.completion_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("chatcmpl-") for i in ids)


def test_thread_key():
    a = [{"role": "user", "content": "Hello  there"}, {"role": "assistant", "content": "hi"},
         {"role": "user", "content": "more"}]
    assert s.thread_key(a) == s.thread_key([{"role": "user", "content": "Hello there"}])
    assert s.thread_key(a) != s.thread_key([{"role": "user", "content": "Hello"}])
    assert s.thread_key(a, "c1") == s.thread_key([{"role": "user", "content": "other"}], "c1")
    assert s.thread_key(a, "c1") != s.thread_key(a, "c2") != s.thread_key(a)
    greeting = [{"role": "assistant", "content": "Welcome"}, *a]
    assert s.thread_key(greeting) == s.thread_key(a) and s.stored_turns(greeting) == a


def rows():
    """u1 → a1 (edited to a1'), a1b (a retry); a1 → u2 → a2; a second root u1 (an edited first question)."""
    return [{"id": 1, "parent_id": None, "role": "user", "content": "u1", "edited": None},
            {"id": 2, "parent_id": 1, "role": "assistant", "content": "a1", "edited": "a1 fixed"},
            {"id": 3, "parent_id": 1, "role": "assistant", "content": "a1b", "edited": None},
            {"id": 4, "parent_id": 2, "role": "user", "content": "u2", "edited": None},
            {"id": 5, "parent_id": 4, "role": "assistant", "content": "a2", "edited": None},
            {"id": 6, "parent_id": None, "role": "user", "content": "other root", "edited": None}]


def turns(*texts):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def test_match_path():
    assert s.match_path([], turns("u1")) == (None, 0)
    assert s.match_path(rows(), turns("u1")) == (1, 1)  # a regenerate: the question is stored already
    assert s.match_path(rows(), turns("u1", "a1", "u2")) == (4, 3)
    assert s.match_path(rows(), turns("u1", "a1", "u2", "a2", "u3")) == (5, 4)  # a new turn after a2
    assert s.match_path(rows(), turns("u1", " a1  fixed", "u2")) == (4, 3)  # the client shows the correction
    assert s.match_path(rows(), turns("u1", "a1b", "u2")) == (3, 2)  # u2 not yet asked after the retry
    assert s.match_path(rows(), turns("u1", "client's own text", "u2")) == (1, 1)
    assert s.match_path(rows(), turns("a1")) == (None, 0)
    dup = rows() + [{"id": 7, "parent_id": 1, "role": "assistant", "content": "a1", "edited": None}]
    assert s.match_path(dup, turns("u1", "a1")) == (7, 2)  # the latest of equal answers


def test_feedback_checks():
    kw = dict(max_comment_chars=10, max_edit_chars=20)
    f = s.check_feedback({"id": "c1", "rating": -1, "reasons": ["wrong", "wrong"], "comment": "meh"}, **kw)
    assert (f.kind, f.value, f.reasons, f.comment) == ("rating", -1, ["wrong"], "meh")
    assert s.check_feedback({"id": "c1", "rating": 0}, **kw).value == 0
    assert s.check_feedback({"id": "c1", "correction": " better "}, **kw).text == "better"
    assert s.check_feedback({"id": "c2", "choice": ["c1", "c2"]}, **kw).candidates == ["c2", "c1"]
    assert s.check_feedback({"id": "c2", "choice": ["c1"]}, **kw).candidates == ["c2", "c1"]
    for body in ({"rating": 1}, {"id": 5, "rating": 1}, {"id": "c1"}, {"id": "c1", "rating": 1, "correction": "x"},
                 {"id": "c1", "rating": 2}, {"id": "c1", "rating": True}, {"id": "c1", "rating": "up"},
                 {"id": "c1", "rating": -1, "reasons": ["boring"]}, {"id": "c1", "rating": -1, "reasons": "wrong"},
                 {"id": "c1", "rating": -1, "comment": "x" * 11}, {"id": "c1", "rating": 0, "comment": "x"},
                 {"id": "c1", "correction": "  "}, {"id": "c1", "correction": "x" * 21},
                 {"id": "c1", "choice": []}, {"id": "c1", "choice": ["c1"]}, {"id": "c1", "choice": "c2"},
                 {"id": "c1", "choice": [f"c{i}" for i in range(20)]}, [1, 2]):
        with pytest.raises(ApiError) as e:
            s.check_feedback(body, **kw)
        assert e.value.status == 400 and e.value.message, body


def test_response_shapes():
    u = s.usage(7, 3)
    assert u == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    body = s.completion_body("chatcmpl-x", "kaizen", "hi", "stop", u, {"sources": []}, created=1)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"} and body["usage"] == u
    c = s.chunk_body("chatcmpl-x", "kaizen", 1, {"content": "h"})
    assert c["object"] == "chat.completion.chunk" and c["choices"][0]["delta"] == {"content": "h"}
    assert s.finish_reason(True) == "length" and s.finish_reason(False) == "stop"


def test_bind_host_and_loopback():
    from web.api import is_loopback
    from web.routes import bind_host
    from agent.settings import Settings

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.2") and not is_loopback("testclient") and not is_loopback(None)
    assert bind_host(Settings(host="0.0.0.0"), has_keys=False) == "127.0.0.1"
    assert bind_host(Settings(host="0.0.0.0"), has_keys=True) == "0.0.0.0"
    assert bind_host(Settings(host="0.0.0.0", auth_file="users.json"), has_keys=False) == "0.0.0.0"


def test_feedback_by_conversation_and_answer_text():
    kw = dict(max_comment_chars=10, max_edit_chars=20)
    f = s.check_feedback({"conversation_id": "owui-1", "answer": "Paris.", "rating": 1}, **kw)
    assert (f.id, f.conversation_id, f.answer, f.value) == (None, "owui-1", "Paris.", 1)
    for body in ({"conversation_id": "c", "rating": 1}, {"answer": "x", "rating": 1},
                 {"conversation_id": "c", "answer": " ", "rating": 1},
                 {"conversation_id": "c", "answer": "x" * 21, "rating": 1},
                 {"conversation_id": "c", "answer": "x", "choice": ["a"]}):
        with pytest.raises(ApiError):
            s.check_feedback(body, **kw)
    got = [{"id": 1, "role": "user", "content": "q", "model": None, "edited": None},
           {"id": 2, "role": "assistant", "content": "Paris. ", "model": "m", "edited": None},
           {"id": 3, "role": "assistant", "content": "Lyon", "model": "m", "edited": "Paris."},
           {"id": 4, "role": "assistant", "content": "Rome", "model": "client", "edited": None}]
    assert s.find_answer(got, "Paris.") == 3 and s.find_answer(got, "paris") is None
    assert s.find_answer(got, "Rome") is None  # the client's own text is no answer of ours
