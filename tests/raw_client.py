"""A raw Gradio client, the way an attacker would call the app: log in with a form, read /config, join the queue
with any `fn_index` and read the event's result from the SSE stream. No gradio_client: it hides nothing here."""
from __future__ import annotations

import json
import time
import uuid

import httpx


def client(url: str, user: str | None = None, password: str | None = None, wait_backoff: bool = False) -> httpx.Client:
    """An HTTP client for the app at `url`, logged in as `user` when given (the login must succeed).
    `wait_backoff`: a login refused by the rate limit (429, after other tests' failed logins from this address) is
    tried again after its `retry_after_s`, up to ten times."""
    c = httpx.Client(base_url=url, timeout=60, follow_redirects=False)
    if user is not None:
        for _ in range(10 if wait_backoff else 1):
            r = c.post("login", data={"username": user, "password": password})
            if r.status_code != 429 or not wait_backoff:
                break
            time.sleep(float(r.json().get("retry_after_s", 1)))
        assert r.status_code == 200, f"login of {user} failed: {r.status_code} {r.text[:200]}"
    return c


def config(c: httpx.Client) -> dict:
    r = c.get("config")
    r.raise_for_status()
    return r.json()


def endpoints(cfg: dict) -> list[dict]:
    """Every dependency with a Python function, as {"fn_index", "api_name", "targets", "inputs", "label"}:
    `label` names the first target ("button:Promote", "chatbot:like", "timer:tick" ...) for messages."""
    comps = {c["id"]: c for c in cfg["components"]}
    out = []
    for i, dep in enumerate(cfg["dependencies"]):
        if not dep.get("backend_fn", True):
            continue
        fn_index = dep.get("id", i)
        labels = []
        for block_id, event in dep.get("targets") or []:
            comp = comps.get(block_id) or {}
            props = comp.get("props") or {}
            name = props.get("value") if comp.get("type") == "button" else (props.get("label") or
                                                                             props.get("elem_id") or block_id)
            labels.append(f"{comp.get('type', '?')}:{name}:{event}")
        out.append({"fn_index": fn_index, "api_name": dep.get("api_name"), "inputs": dep.get("inputs") or [],
                    "label": ", ".join(labels) or "load"})
    return out


def default_inputs(cfg: dict, endpoint: dict) -> list:
    """The value each input component starts with (what a browser would send untouched): the load bench's."""
    from bench.load_sessions import start_values

    return start_values(cfg, endpoint)


def call(c: httpx.Client, fn_index: int, data: list, session_hash: str | None = None, event_data=None,
         trigger_id: int | None = None) -> dict:
    """Join the queue for `fn_index` and wait for the event to complete. Returns {"status": HTTP status of the
    join, "success": bool | None, "output": dict | None, "messages": [msg dicts seen]} ("success" None when the
    join itself was refused)."""
    session_hash = session_hash or uuid.uuid4().hex[:11]
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": event_data,
                       "trigger_id": trigger_id})  # ASCII JSON: a lone surrogate travels as an escape, as a browser's
    r = c.post("gradio_api/queue/join", content=body.encode(), headers={"content-type": "application/json"})
    if r.status_code != 200:
        return {"status": r.status_code, "success": None, "output": None, "messages": [], "body": r.text}
    event_id = r.json()["event_id"]
    seen = []
    with c.stream("GET", "gradio_api/queue/data", params={"session_hash": session_hash}) as s:
        for line in s.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            seen.append(msg)
            if msg.get("msg") == "process_completed" and msg.get("event_id") == event_id:
                return {"status": 200, "success": msg.get("success"), "output": msg.get("output"),
                        "messages": seen}
    return {"status": 200, "success": None, "output": None, "messages": seen}


def error_text(result: dict) -> str:
    """The error (or the gr.Warning / gr.Info texts) an event produced, for assertions."""
    parts = []
    out = result.get("output") or {}
    if out.get("error"):
        parts.append(str(out["error"]))
    for m in result.get("messages", []):
        if m.get("msg") == "log":
            parts.append(str(m.get("log")))
    return " | ".join(parts)
