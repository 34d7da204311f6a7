"""The web guard's pure parts: login backoff per user and per address, sessions bound to their first user."""
from __future__ import annotations

from web.guard import LoginLimiter, SessionOwners, login_keys


def test_backoff_starts_after_the_free_failures_and_doubles():
    lim = LoginLimiter(free=3, base_s=1.0, max_s=8.0, forget_s=3600)
    keys = login_keys("bob", "10.0.0.1")
    t = 1000.0
    for _ in range(3):
        assert lim.check(keys, t) == 0
        lim.failed(keys, t)
    waits = []
    for _ in range(6):
        w = lim.check(keys, t)
        waits.append(w)
        t += w  # wait exactly as long as told, then fail again
        assert lim.check(keys, t) == 0
        lim.failed(keys, t)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # doubling, capped at max_s


def test_limits_are_per_user_and_per_address():
    lim = LoginLimiter(free=2, base_s=10.0)
    for name in ("alice", "bob", "carol"):  # one address guessing many users
        lim.failed(login_keys(name, "10.0.0.9"), 0.0)
    assert lim.check(login_keys("dave", "10.0.0.9"), 1.0) > 0  # the address is limited for every name
    assert lim.check(login_keys("dave", "10.0.0.8"), 1.0) == 0  # another address, another user: free
    for addr in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):  # many addresses guessing one user
        lim.failed(login_keys("erin", addr), 0.0)
    assert lim.check(login_keys("erin", "10.0.0.4"), 1.0) > 0  # the user is limited from everywhere


def test_success_clears_the_user_but_not_the_address():
    lim = LoginLimiter(free=1, base_s=5.0)
    keys = login_keys("bob", "10.0.0.1")
    lim.failed(keys, 0.0)
    lim.failed(keys, 0.0)
    assert lim.check(keys, 1.0) > 0
    lim.succeeded(keys)
    assert lim.wait("user:bob", 1.0) == 0 and lim.wait("addr:10.0.0.1", 1.0) > 0


def test_failures_are_forgotten_after_a_quiet_hour_and_memory_is_bounded():
    lim = LoginLimiter(free=1, base_s=5.0, forget_s=3600, max_keys=10)
    keys = login_keys("bob", "10.0.0.1")
    for _ in range(5):
        lim.failed(keys, 0.0)
    assert lim.check(keys, 10.0) > 0 and lim.check(keys, 3601.0) == 0
    lim.failed(keys, 3700.0)  # counted from 1 again: the first step of the backoff, not the fifth
    assert lim.check(keys, 3700.0) == 5.0
    for i in range(50):
        lim.failed([f"user:u{i}"], 0.0)
    assert len(lim._fails) == 10


def test_a_session_belongs_to_its_first_user():
    s = SessionOwners(max_sessions=3)
    assert s.claim("abc", "alice") and s.claim("abc", "alice")
    assert not s.claim("abc", "bob") and not s.claim("abc", None)
    assert s.owner("abc") == "alice"
    assert s.claim("xyz", "bob")
    for k in ("k1", "k2", "k3"):
        s.claim(k, "carol")
    assert s.owner("abc") is None  # the oldest forgotten: bounded memory


def test_lone_surrogates_are_replaced_and_pairs_kept():
    import json

    from web.guard import clean_json_body, clean_text

    assert clean_text({"k\ud800": ["a\udfffb", 1, None, "ok 😀"]}) == {"k\ufffd": ["a\ufffdb", 1, None, "ok 😀"]}
    body = json.dumps({"data": ["hi \ud83d", "fine \U0001F600"]}).encode()
    cleaned = json.loads(clean_json_body(body))
    assert cleaned["data"] == ["hi \ufffd", "fine 😀"]
    cleaned_text = json.dumps(cleaned, ensure_ascii=False)
    cleaned_text.encode("utf-8")  # encodable now
    assert clean_json_body(b'{"a": "plain"}') == b'{"a": "plain"}'
    assert clean_json_body(b"not json \\ud800") == b"not json \\ud800"


def test_a_write_from_another_site_is_foreign_and_the_apps_own_or_none_is_not():
    from web.guard import foreign_origin, parse_allowed

    def h(**kw):
        return {k.replace("_", "-").encode(): v.encode() for k, v in kw.items()}

    assert foreign_origin(h(host="127.0.0.1:7860", origin="http://127.0.0.1:7860")) is None
    assert foreign_origin(h(host="127.0.0.1:7860")) is None  # gradio_client, curl: no Origin, no Referer
    assert foreign_origin(h(host="chat.example", origin="https://chat.example:443")) is None  # default port
    assert foreign_origin(h(host="127.0.0.1:7860", origin="http://evil.example")) == "http://evil.example"
    assert foreign_origin(h(host="127.0.0.1:7860", origin="http://127.0.0.1:7861")) == "http://127.0.0.1:7861"
    assert foreign_origin(h(host="127.0.0.1:7860", origin="null")) == "null"  # a sandboxed frame, a file:// page
    assert foreign_origin(h(host="127.0.0.1:7860", referer="http://evil.example/page?x=1")) == "http://evil.example/page"
    assert foreign_origin(h(host="127.0.0.1:7860", referer="http://127.0.0.1:7860/")) is None
    # behind a TLS proxy: the app sees its own address in Host and the public one in X-Forwarded-Host
    assert foreign_origin(h(host="127.0.0.1:7860", x_forwarded_host="chat.example",
                            origin="https://chat.example")) is None
    allowed = parse_allowed("https://front.example, http://10.0.0.2:3000")
    assert foreign_origin(h(host="127.0.0.1:7860", origin="https://front.example"), allowed) is None
    assert foreign_origin(h(host="127.0.0.1:7860", origin="http://front.example"), allowed) == "http://front.example"
    import pytest

    with pytest.raises(ValueError, match="KAIZEN_ALLOWED_ORIGINS"):
        parse_allowed("front.example")


def test_only_huggingface_may_frame_a_public_space_and_nobody_frames_the_app_otherwise(tmp_path):
    """A public Space is shown inside huggingface.co's page: there the CSP names that framer (and no
    X-Frame-Options: DENY, which would blank the Space); everywhere else no page may frame the app."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from agent.settings import Settings
    from web.visitors import Visitors
    from web.guard import Guard

    inner = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    private = TestClient(Guard(inner)).get("/")
    assert private.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in private.headers["content-security-policy"]
    visitors = Visitors.from_settings(Settings(data_dir=tmp_path / "data", public=True))
    public = TestClient(Guard(inner, visitors=visitors)).get("/")
    csp = public.headers["content-security-policy"]
    assert "x-frame-options" not in public.headers
    assert "frame-ancestors 'self' https://huggingface.co;" in csp and "frame-ancestors 'none'" not in csp
    assert public.headers["x-content-type-options"] == "nosniff"
    refused = TestClient(Guard(inner, visitors=visitors)).post("/", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and "x-frame-options" not in refused.headers  # the guard's own answers too
    assert "https://huggingface.co" in refused.headers["content-security-policy"]
