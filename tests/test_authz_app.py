"""Login mode attacked as an outsider would: the real app in a subprocess (a tiny base model, so it starts fast),
an admin A and a user B in the users file, and every endpoint in the app's /config called by `fn_index` as B and
with no login at all. Any endpoint not on NON_ADMIN_OK must refuse B with the admin refusal and change nothing;
so a new admin handler added without `Authz.admin_only` / `require_admin` fails here."""
from __future__ import annotations

import json

import pytest

from feedback import auth
from ui.authz import REFUSAL
from tests import raw_client as R
from tests.conftest import running_app

pytestmark = pytest.mark.slow

# What a logged-in non-admin may call: the chat, feedback on their own answers, their own documents, their own
# feedback statistics, the page load. Keyed by the api_name Gradio gives each endpoint (the function's name,
# numbered when repeated). Everything else is for admins.
NON_ADMIN_OK = {
    "chat", "on_send_typed_ahead", "on_send_typed_ahead_1", "on_stop", "on_new", "on_new_1", "on_retry",  # chat
    "clear_view", "clear_view_1", "on_view", "on_view_1", "on_continue",  # the pick row and Continue
    "on_like", "on_why", "on_why_close", "on_edit", "handler", "handler_1", "on_undo",  # feedback on one's own answers
    "on_upload", "on_delete", "on_refresh", "on_select", "on_refresh_1",  # one's own documents
    "on_job", "on_job_1",  # the progress, then the outcome, of one's own upload job
    "refresh", "refresh_1",  # the Feedback tab (scoped to the viewer): its button and its tab select
    "history_open", "history_restore", "history_saved", "history_saved_1", "history_rename", "history_delete",
    "history_cleared", "history_cleared_1",  # the history sidebar: the caller's own conversations
    "on_reopened", "on_reopened_1",  # a reopened conversation's own chat settings (from the caller's state)
    "export",  # the Feedback tab's export: the caller's own record
    "on_load", "on_adapters_tick",  # the page load; the chat's Adapter list kept current
    "on_details", *(f"on_details_{i}" for i in range(1, 10)),  # "Answer details" of one's own latest answer
}
# Page-load fills of admin views: a non-admin's page calls them too, so they answer with no change at all (every
# output a skip) instead of an error; checked below like the admin ones.
QUIET_FOR_NON_ADMINS = {"quiet_admin_fill_the_adapters_tab", "quiet_admin_fill_the_adapters_tab_1",  # load, select
                        "quiet_admin_fill_the_lab_reports"}
PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}


def admin_things(root, tokenizer, data) -> tuple:
    """A tiny base in `root` and, in the data dir `data`, what only admins may touch: a registered adapter version
    and a lab report. Returns (base folder, settings, version)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapters.registry import Registry
    from agent.settings import Settings
    from tests.train_support import save_tiny_base

    base = save_tiny_base(root / "base", tokenizer)
    settings = Settings(data_dir=data, base_model=str(base))
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(root / "lora")
    version = Registry(settings).register(root / "lora", {"method": "sft"})
    report = data / "lab" / "squad-20260101-000000"
    report.mkdir(parents=True)
    (report / "report.json").write_text(json.dumps({"task": {"title": "SQuAD"}, "techniques": []}))
    return base, settings, version


@pytest.fixture(scope="module")
def login_app(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("authz")
    data = root / "data"
    base, settings, version = admin_things(root, tokenizer, data)
    users = root / "users.json"
    auth.add_user(users, "alice", PASSWORDS["alice"], "admin", iterations=1000)
    auth.add_user(users, "bob", PASSWORDS["bob"], "user", iterations=1000)
    with running_app(data, base, KAIZEN_AUTH_FILE=str(users)) as server:
        server.update(version=version, settings=settings, users=users)
        yield server


def registry_state(data) -> dict:
    """What an admin action would change: the registry's pointers, the A/B test, the scheduler's state, the lab."""
    adapters = data / "adapters"
    files = {name: (adapters / name).read_text() if (adapters / name).exists() else None
             for name in ("ACTIVE", "PIN", "AB", "history.json", "scheduler.json")}
    files["runs"] = sorted(p.name for p in adapters.iterdir() if not p.name.startswith("v")
                           and p.name not in files and p.name != ".adapt.lock") if adapters.exists() else []
    files["lab"] = sorted(p.name for p in (data / "lab").iterdir()) if (data / "lab").exists() else []
    return files


def assert_admin_endpoints_refuse(c, data, also_ok: frozenset = frozenset()) -> list[dict]:
    """Every endpoint of `c`'s page not on NON_ADMIN_OK (| `also_ok`) refuses `c` with the admin refusal and changes
    nothing in `data`; the quiet ones answer with skips only; the allowlisted ones answer without a refusal.
    Returns the endpoints. Used for login mode's users and public mode's visitors (tests/test_public.py)."""
    allowed = NON_ADMIN_OK | also_ok
    cfg = R.config(c)
    eps = R.endpoints(cfg)
    names = [e["api_name"] for e in eps]
    assert len(names) == len(set(names)), f"api names must be unique to key the allowlist: {names}"
    stale = (allowed | QUIET_FOR_NON_ADMINS) - set(names)
    assert not stale, f"allowlisted endpoints that no longer exist (update NON_ADMIN_OK): {stale}"
    info = c.get("gradio_api/info").json()
    assert {k.lstrip("/") for k in info["named_endpoints"]} <= set(names)  # the documented API is in the table

    before = registry_state(data)
    admin_eps = [e for e in eps if e["api_name"] not in allowed | QUIET_FOR_NON_ADMINS]
    assert len(admin_eps) >= 12, [e["label"] for e in admin_eps]  # adapters tab (10), lab (3), ...
    labels = " ".join(e["label"] for e in admin_eps)
    for needed in ("Promote", "Roll back", "Pin", "Start A/B test", "Stop A/B test", "Train now", "Run the lab"):
        assert needed in labels, f"{needed} is not among the admin endpoints: {labels}"
    not_refused = []
    for e in admin_eps:
        # the page's own values (no version is chosen: the page lists none; Gradio itself refuses a version that is
        # not among the dropdown's choices of the session, so the role check is what answers here)
        result = R.call(c, e["fn_index"], R.default_inputs(cfg, e))
        text = R.error_text(result)
        if result["success"] is not False or REFUSAL not in text:
            not_refused.append(f"{e['api_name']} ({e['label']}): success={result['success']} {text[:200]}")
    assert not not_refused, "endpoints a non-admin could call (guard them or allowlist them):\n" + \
        "\n".join(not_refused)
    assert registry_state(data) == before  # nothing changed: no promotion, pin, A/B test, run or lab report
    for e in eps:
        if e["api_name"] in QUIET_FOR_NON_ADMINS:
            result = R.call(c, e["fn_index"], R.default_inputs(cfg, e))
            assert result["success"] is True, R.error_text(result)
            assert all(d is None or (isinstance(d, dict) and d.get("__type__") == "update" and set(d) <= {"__type__"})
                       for d in result["output"]["data"]), (e, result["output"]["data"])  # None: a gr.State's slot

    # the allowlisted ones answer (with the caller's own data) and change nothing of the admin's either
    for e in eps:
        if e["api_name"] in allowed:
            result = R.call(c, e["fn_index"], R.default_inputs(cfg, e))
            assert REFUSAL not in R.error_text(result), e
    assert registry_state(data) == before
    return eps


def test_every_endpoint_refuses_a_non_admin_unless_allowlisted(login_app):
    url, data = login_app["url"], login_app["data_dir"]
    bob = R.client(url, "bob", PASSWORDS["bob"])
    eps = assert_admin_endpoints_refuse(bob, data)
    admin_eps = [e for e in eps if e["api_name"] not in NON_ADMIN_OK | QUIET_FOR_NON_ADMINS]
    before = registry_state(data)

    # the same call as the admin goes through: the check is on the role, not on the endpoint
    alice = R.client(url, "alice", PASSWORDS["alice"])
    promote = next(e for e in admin_eps if "button:Promote:click" in e["label"])
    fill = next(e for e in eps if e["api_name"] == "quiet_admin_fill_the_adapters_tab")
    session = "alicepromo1"
    filled = R.call(alice, fill["fn_index"], [None, None], session_hash=session)  # what A's page load does
    assert filled["success"] and login_app["version"] in json.dumps(filled["output"]["data"])
    result = R.call(alice, promote["fn_index"], [login_app["version"], None], session_hash=session)
    assert result["success"] is True, R.error_text(result)
    assert "never checked by the gate" in R.error_text(result)  # registered by hand: Promote asks first
    assert registry_state(data) == before
    confirm = next(e for e in admin_eps if "button:Yes, do it:click" in e["label"])
    result = R.call(alice, confirm["fn_index"], [login_app["version"], None, None], session_hash=session)
    assert result["success"] is True, R.error_text(result)
    assert (data / "adapters" / "ACTIVE").read_text().strip() == login_app["version"]


def test_the_page_config_shows_no_registry_and_no_paths_to_a_non_admin(login_app):
    bob = R.client(login_app["url"], "bob", PASSWORDS["bob"])
    text = bob.get("config").text
    assert str(login_app["data_dir"]) not in text and login_app["version"] not in text
    assert "squad-20260101" not in text
    alice = R.client(login_app["url"], "alice", PASSWORDS["alice"])
    cfg = R.config(alice)
    fill = next(e for e in R.endpoints(cfg) if e["api_name"] == "quiet_admin_fill_the_lab_reports")
    r = R.call(alice, fill["fn_index"], [])
    assert r["success"] and any("squad-20260101" in str(c) for c in r["output"]["data"][0]["choices"])


def test_anonymous_clients_reach_no_endpoint(login_app):
    url = login_app["url"]
    alice = R.client(url, "alice", PASSWORDS["alice"])
    cfg = R.config(alice)
    anon = R.client(url)
    assert anon.get("config").status_code == 401
    for e in R.endpoints(cfg):
        result = R.call(anon, e["fn_index"], R.default_inputs(cfg, e))
        assert result["status"] == 401 and result["success"] is None, e


def test_a_removed_or_demoted_admin_loses_admin_rights_at_once(login_app):
    """Roles are read from the users file on every call, not from the login."""
    url, users = login_app["url"], login_app["users"]
    carol = "carol-password"
    auth.add_user(users, "carol", carol, "admin", iterations=1000)
    c = R.client(url, "carol", carol)
    cfg = R.config(c)
    rollback = next(e for e in R.endpoints(cfg) if "button:Roll back:click" in e["label"])
    auth.add_user(users, "carol", carol, "user", replace=True, iterations=1000)
    before = registry_state(login_app["data_dir"])
    result = R.call(c, rollback["fn_index"], R.default_inputs(cfg, rollback))
    assert result["success"] is False and REFUSAL in R.error_text(result)
    assert registry_state(login_app["data_dir"]) == before
    users.write_text(json.dumps({"users": [u for u in auth.load_users(users) if u["name"] != "carol"]}))


def endpoint(cfg, api_name):
    return next(e for e in R.endpoints(cfg) if e["api_name"] == api_name)


def upload(c, cfg, name: str, text: str, to_shared=False) -> dict:
    r = c.post("gradio_api/upload", files={"files": (name, text.encode(), "text/plain")})
    r.raise_for_status()
    path = r.json()[0]
    result = R.call(c, endpoint(cfg, "on_upload")["fn_index"],
                    [[{"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}], to_shared])
    return {"path": path, **result}


def doc_rows(c, cfg) -> list[list]:
    result = R.call(c, endpoint(cfg, "on_refresh")["fn_index"], [])
    assert result["success"], R.error_text(result)
    table = result["output"]["data"][0]
    return (table.get("value") or table)["data"]


def test_documents_are_per_user_through_the_running_app(login_app):
    """A uploads a secret; B does not see it in the list, cannot delete it, and B's grounded answer cites none of
    it (the sources stored with B's answer), while A's does. The upload leaves Gradio's temp dir once ingested."""
    import sqlite3
    from pathlib import Path

    url = login_app["url"]
    alice = R.client(url, "alice", PASSWORDS["alice"])
    bob = R.client(url, "bob", PASSWORDS["bob"])
    cfg = R.config(alice)
    secret = "The vault combination for the Quillfeather archive is 7-19-33, written under the blue lamp."
    up = upload(alice, cfg, "vault.txt", secret)
    assert up["success"], R.error_text(up)
    assert "added" in up["output"]["data"][0]
    assert not Path(up["path"]).exists(), "the upload stays in Gradio's temp dir after it was ingested"
    a_rows = doc_rows(alice, cfg)
    assert [r[1] for r in a_rows] == ["vault.txt"]
    doc_id = a_rows[0][0]

    assert doc_rows(bob, cfg) == []
    # B deletes A's document by its id: refused (Gradio's own check of the dropdown's choices refuses it first;
    # delete_doc's per-owner check behind it is tested in test_docs_owners.py), A still has it
    r = R.call(bob, endpoint(cfg, "on_delete")["fn_index"], [doc_id])
    assert (r["success"] is False and "not in the list of choices" in R.error_text(r)) or \
        "no longer in the store" in r["output"]["data"][0], R.error_text(r)
    assert [row[0] for row in doc_rows(alice, cfg)] == [doc_id]
    # B cannot write the shared library either
    r = upload(bob, cfg, "notice.txt", "A notice for everyone about the car park.", to_shared=True)
    assert r["success"] is False and REFUSAL in R.error_text(r)
    assert doc_rows(bob, cfg) == [] and [row[1] for row in doc_rows(alice, cfg)] == ["vault.txt"]

    chat = endpoint(cfg, "chat")["fn_index"]
    question = "What is the vault combination for the Quillfeather archive?"
    for who, c in (("bob", bob), ("alice", alice)):
        r = R.call(c, chat, [question, None, "plain", "on", "active", 0, 40])
        assert r["success"], R.error_text(r)
    with sqlite3.connect(login_app["db"]) as db:
        rows = db.execute("select u.name, m.sources from messages m join conversations c on c.id = m.conversation_id "
                          "join users u on u.id = c.user_id "
                          "where m.role = 'assistant' order by m.id").fetchall()
    sources = {name: json.loads(src or "[]") for name, src in rows}
    assert sources["bob"] == []
    assert [s["doc_id"] for s in sources["alice"]] == [doc_id]

    # B names A's conversation to the history sidebar (a forged localStorage value on page load, or a forged
    # pick in the list): nothing of A's comes back, and A's conversation is not listed for B
    with sqlite3.connect(login_app["db"]) as db:
        (alice_conv,), = db.execute("select c.id from conversations c join users u on u.id = c.user_id "
                                    "where u.name = 'alice' order by c.id desc limit 1").fetchall()
    for name in ("history_restore", "history_open"):
        r = R.call(bob, endpoint(cfg, name)["fn_index"], [alice_conv])
        seen = json.dumps(r.get("output") or {}) + R.error_text(r)
        assert "Quillfeather" not in seen and "7-19-33" not in seen, (name, seen[:500])
    r = R.call(alice, endpoint(cfg, "history_restore")["fn_index"], [alice_conv])
    assert "Quillfeather" in json.dumps(r["output"]), "the owner gets her conversation back"


def test_a_session_is_bound_to_its_user(login_app):
    """With A's session hash B gets neither A's chat, nor A's stream, nor a cancel of A's answer."""
    url = login_app["url"]
    alice = R.client(url, "alice", PASSWORDS["alice"])
    bob = R.client(url, "bob", PASSWORDS["bob"])
    cfg = R.config(alice)
    chat = endpoint(cfg, "chat")["fn_index"]
    session = "alicesess01"
    first = R.call(alice, chat, ["Tell me about Quillfeather owls.", None, "plain", "off", "active", 0, 40],
                   session_hash=session)
    assert first["success"], R.error_text(first)
    stolen = R.call(bob, chat, ["And now?", None, "plain", "off", "active", 0, 40], session_hash=session)
    assert stolen["status"] == 403 and "Quillfeather" not in stolen["body"]
    r = bob.get("gradio_api/queue/data", params={"session_hash": session})
    assert r.status_code == 403
    r = bob.post("gradio_api/cancel", json={"session_hash": session, "fn_index": chat, "event_id": "x"})
    assert r.status_code == 403
    r = R.client(url).post("gradio_api/cancel", json={"session_hash": session, "fn_index": chat, "event_id": "x"})
    assert r.status_code == 401
    again = R.call(alice, chat, ["Where do they nest?", None, "plain", "off", "active", 0, 40], session_hash=session)
    assert again["success"], R.error_text(again)
    shown = again["output"]["data"][1]  # outputs: state (kept on the server), chatbot, ...
    assert [m["role"] for m in shown] == ["user", "assistant", "user", "assistant"]  # A's chat, untouched


def test_a_user_removed_from_the_users_file_is_logged_out_at_once(login_app):
    url, users = login_app["url"], login_app["users"]
    auth.add_user(users, "dave", "dave-password", "user", iterations=1000)
    dave = R.client(url, "dave", "dave-password")
    assert dave.get("config").status_code == 200
    users.write_text(json.dumps({"users": [u for u in auth.load_users(users) if u["name"] != "dave"]}))
    assert dave.get("config").status_code == 401
    auth.add_user(users, "dave", "dave-password", "user", iterations=1000)
    assert dave.get("config").status_code == 401  # the old login is gone: log in again


def test_security_headers_and_body_cap(login_app):
    url = login_app["url"]
    for c, path in ((R.client(url), ""), (R.client(url, "bob", PASSWORDS["bob"]), "config")):
        r = c.get(path)
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "img-src 'self' data: blob:" in r.headers["content-security-policy"]
    bob = R.client(url, "bob", PASSWORDS["bob"])
    r = bob.post("gradio_api/queue/join", content=b'{"data": ["' + b"x" * (2 << 20) + b'"]}',
                 headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_lone_surrogate_is_replaced_at_the_boundary(login_app):
    """A lone surrogate in a message no longer breaks the session: it is stored as U+FFFD and the chat goes on."""
    import sqlite3

    alice = R.client(login_app["url"], "alice", PASSWORDS["alice"])
    cfg = R.config(alice)
    chat = endpoint(cfg, "chat")["fn_index"]
    session = "surrogate01"
    r = R.call(alice, chat, ["broken \ud800 text", None, "plain", "off", "active", 0, 40], session_hash=session)
    assert r["success"], R.error_text(r)
    r = R.call(alice, chat, ["and the next message", None, "plain", "off", "active", 0, 40], session_hash=session)
    assert r["success"], R.error_text(r)
    with sqlite3.connect(login_app["db"]) as db:
        assert db.execute("select count(*) from messages where content = ?", ("broken \ufffd text",)).fetchone()[0] == 1


def test_login_is_rate_limited_per_user_and_address(login_app):
    """Last in this module: it leaves the loopback address limited."""
    url = login_app["url"]
    c = R.client(url)
    codes = [c.post("login", data={"username": "bob", "password": f"wrong-{i}"}).status_code for i in range(5)]
    assert codes == [400] * 5
    r = c.post("login", data={"username": "bob", "password": "wrong-again"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # limited before the password is even checked: the right one is refused too, for bob and from this address
    assert c.post("login", data={"username": "bob", "password": PASSWORDS["bob"]}).status_code == 429
    assert c.post("login", data={"username": "alice", "password": PASSWORDS["alice"]}).status_code == 429


def test_an_upload_job_is_seen_by_its_owner_only(login_app):
    """A's big upload is indexed in a background job: while it runs, A's job poll (the Documents tab's timer)
    shows its progress and B's shows nothing of it; once done, A's poll gives the outcome and B's still nothing."""
    import threading

    alice, bob = (R.client(login_app["url"], u, PASSWORDS[u], wait_backoff=True) for u in ("alice", "bob"))
    cfg = R.config(alice)
    poll = endpoint(cfg, "on_job")["fn_index"]
    text = "\n\n".join(f"Ledger page {i}: the heron count at the weir was {i * 7} on the {i % 28 + 1}th."
                       for i in range(3000))  # ~200 KB: seconds of embedding
    done = {}
    worker = threading.Thread(target=lambda: done.update(upload(alice, cfg, "heron-ledger.txt", text)))
    worker.start()
    try:
        seen_running = False
        while worker.is_alive() and not seen_running:
            a = R.call(alice, poll, [])
            assert a["success"], R.error_text(a)
            seen_running = "Indexing heron-ledger.txt in the background" in json.dumps(a["output"])
            b = R.call(bob, poll, [])
            assert b["success"] and "heron" not in json.dumps(b["output"]), b["output"]
    finally:
        worker.join(300)
    assert seen_running, "A's poll never showed the running job"
    assert done["success"], R.error_text(done)
    a, b = R.call(alice, poll, []), R.call(bob, poll, [])
    assert "heron-ledger.txt" in json.dumps(a["output"]) and "added" in json.dumps(a["output"])
    assert b["success"] and "heron" not in json.dumps(b["output"])
    assert "heron-ledger.txt" not in json.dumps(doc_rows(bob, cfg))
