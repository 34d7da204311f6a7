"""Load test: many concurrent chat sessions on the real app, each its own logged-in user, through Gradio's queue
(`/gradio_api/queue/join` + the SSE stream, as a browser does). Measures, in the same run:

- an idle answer: one user alone (median of a few): its first token and its length (seconds to the last token);
- under load: `--sessions` users asking one question after another; while they run, `--newcomers` users who never
  asked before ask once each: their time to first token, against the idle answer:
  ratio = (newcomer first token - idle first token) / idle answer length (the Proof of issue 14 asks for <= 2);
- that every answer is stored: per user, one assistant row per question they saw answered, in that user's
  conversation, with the text they were shown.

Prints JSON (and writes it to --out). Usage:
    python bench/load_sessions.py [--sessions 20] [--newcomers 3] [--new-tokens 24] [--out load_sessions.json]
It starts `kaizen serve` in login mode on a fresh data dir (the app's model and engine: KAIZEN_BASE_MODEL, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

import httpx  # noqa: E402

PASSWORD = "load-test-password"


# ---------------------------------------------------------------------------------------------- one question
def login(url: str, user: str, password: str = PASSWORD) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=600)
    r = c.post("login", data={"username": user, "password": password})
    if r.status_code != 200:
        raise RuntimeError(f"login of {user} failed: {r.status_code} {r.text[:200]}")
    return c


_INPUTS: dict[int, list] = {}  # fn_index -> what the page sends untouched (the sliders' values among them)


def start_values(cfg: dict, dep: dict) -> list:
    """The value each input of the dependency `dep` of the page's /config starts with (what a browser sends
    untouched)."""
    comps = {comp["id"]: comp for comp in cfg["components"]}
    return [(comps.get(cid, {}).get("props") or {}).get("value") for cid in dep["inputs"]]


def chat_endpoint(c: httpx.Client) -> int:
    """The fn_index of the public `chat` endpoint (the API's own trigger, in the answers' queue like the message box);
    remembers its inputs' start values."""
    cfg = c.get("config").json()
    for i, dep in enumerate(cfg["dependencies"]):
        if dep.get("api_name") == "chat":
            fn_index = dep.get("id", i)
            _INPUTS[fn_index] = start_values(cfg, dep)
            return fn_index
    raise RuntimeError("the app has no `chat` endpoint")


def chat_data(fn_index: int, question: str) -> list:
    """The `chat` inputs as the page sends them: the question, the state, plain template, no documents, the active
    adapter, and the chat settings' start values (temperature, max tokens)."""
    data = list(_INPUTS.get(fn_index) or [None] * 5)
    data[:5] = [question, None, "plain", "off", "active"]
    return data


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(p) for p in content)
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    return ""


def last_answer(output: dict | None) -> str | None:
    """The last assistant message of the Chatbot value in a completed event's output (None when there is none)."""
    for value in (output or {}).get("data") or []:
        if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
            answers = [m for m in value if m["role"] == "assistant"]
            return _text(answers[-1]["content"]) if answers else None
    return None


def ask(c: httpx.Client, fn_index: int, question: str, session: str, on_first_token=None) -> dict:
    """Ask one question in `session` and follow the stream: {"question", "session", "success", "first_token_s",
    "total_s", "answer" (as shown, escaped), "warnings"}. The first `process_generating` message is the first
    token (the chat handler yields once per piece and never before the first); `on_first_token()` is called then."""
    body = {"data": chat_data(fn_index, question), "fn_index": fn_index, "session_hash": session,
            "event_data": None, "trigger_id": None}
    t0 = time.perf_counter()
    out = {"question": question, "session": session, "success": None, "first_token_s": None, "total_s": None,
           "answer": None, "warnings": []}
    r = c.post("gradio_api/queue/join", json=body)
    if r.status_code != 200:
        out["warnings"].append(f"join refused: {r.status_code} {r.text[:200]}")
        return out
    event_id = r.json()["event_id"]
    with c.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as s:
        for line in s.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("event_id") not in (None, event_id):
                continue
            kind = msg.get("msg")
            if kind == "process_generating" and out["first_token_s"] is None:
                out["first_token_s"] = time.perf_counter() - t0
                if on_first_token is not None:
                    on_first_token()
            elif kind == "log":
                out["warnings"].append(str(msg.get("log")))
            elif kind == "process_completed":
                out["total_s"] = time.perf_counter() - t0
                out["success"] = bool(msg.get("success"))
                out["answer"] = last_answer(msg.get("output"))
                if not msg.get("success"):
                    out["warnings"].append(str((msg.get("output") or {}).get("error")))
                break
    return out


# ---------------------------------------------------------------------------------------------- the load
def question_for(user: str, i: int) -> str:
    return f"Question {i} from {user}: name one colour and one fruit."


def run_load(url: str, sessions: int = 20, newcomers: int = 3, idle_rounds: int = 3,
             session_users: list[str] | None = None, newcomer_users: list[str] | None = None,
             idle_user: str = "idle", password: str = PASSWORD) -> dict:
    """The measurement on a running app whose users file has every user named (all with `password`)."""
    session_users = session_users or [f"u{i:02d}" for i in range(1, sessions + 1)]
    newcomer_users = newcomer_users or [f"new{i}" for i in range(1, newcomers + 1)]
    idle_c = login(url, idle_user, password)
    fn = chat_endpoint(idle_c)
    records: list[dict] = []
    lock = threading.Lock()

    def keep(user, rec):
        rec["user"] = user
        with lock:
            records.append(rec)
        return rec

    idle_session = uuid.uuid4().hex[:11]
    keep(idle_user, ask(idle_c, fn, question_for(idle_user, 0), idle_session))  # warm-up, not counted
    idle = [keep(idle_user, ask(idle_c, fn, question_for(idle_user, i), idle_session))
            for i in range(1, idle_rounds + 1)]
    idle_ttft = statistics.median(r["first_token_s"] for r in idle)
    idle_len = statistics.median(r["total_s"] - r["first_token_s"] for r in idle)
    idle_total = statistics.median(r["total_s"] for r in idle)

    clients = {u: login(url, u, password) for u in session_users + newcomer_users}
    stop = threading.Event()
    served = {u: 0 for u in session_users}

    def session_loop(user):
        c, session, i = clients[user], uuid.uuid4().hex[:11], 0
        while not stop.is_set():
            i += 1
            keep(user, ask(c, fn, question_for(user, i), session))
            served[user] += 1

    threads = [threading.Thread(target=session_loop, args=(u,), daemon=True) for u in session_users]
    t_load = time.perf_counter()
    for t in threads:
        t.start()
    while min(served.values()) < 1:  # steady state: every session has had an answer
        time.sleep(0.2)
    warmup_s = time.perf_counter() - t_load
    newcomer_results = []
    for user in newcomer_users:  # one at a time, each a user who never asked
        newcomer_results.append(keep(user, ask(clients[user], fn, question_for(user, 1), uuid.uuid4().hex[:11])))
        time.sleep(idle_total)
    stop.set()
    for t in threads:
        t.join(600)
    load_s = time.perf_counter() - t_load
    under_load = [r for r in records if r["user"] in served and r["first_token_s"] is not None]
    ratios = [(r["first_token_s"] - idle_ttft) / idle_len for r in newcomer_results if r["first_token_s"]]
    ttfts = sorted(r["first_token_s"] for r in under_load)
    return {
        "sessions": len(session_users), "newcomers": len(newcomer_users),
        "idle": {"first_token_s": round(idle_ttft, 3), "answer_length_s": round(idle_len, 3),
                 "total_s": round(idle_total, 3)},
        "newcomer_first_token_s": [round(r["first_token_s"] or -1, 3) for r in newcomer_results],
        "newcomer_ratio": [round(x, 2) for x in ratios], "newcomer_ratio_max": round(max(ratios), 2) if ratios else None,
        "goal_ratio": 2.0, "met": bool(ratios) and len(ratios) == len(newcomer_results) and max(ratios) <= 2.0,
        "load": {"answers": len(under_load), "seconds": round(load_s, 1), "warmup_s": round(warmup_s, 1),
                 "answers_per_s": round(len(under_load) / load_s, 2),
                 "first_token_p50_s": round(ttfts[len(ttfts) // 2], 3) if ttfts else None,
                 "first_token_p95_s": round(ttfts[int(len(ttfts) * 0.95)], 3) if ttfts else None},
        "failed": [r for r in records if not r["success"]],
        "records": records,
    }


def check_stored(db: str | Path, records: list[dict]) -> dict:
    """Every answer a client saw is in SQLite once, for its user, with the shown text: returns {"answers",
    "stored", "problems": [...]} (no problems = all stored)."""
    from agent.escape import unescape_chat

    problems = []
    with sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT u.name, q.content, a.content FROM messages a JOIN messages q ON q.id = a.parent_id "
            "JOIN conversations c ON c.id = a.conversation_id JOIN users u ON u.id = c.user_id "
            "WHERE a.role = 'assistant'").fetchall()
    stored: dict[tuple[str, str], list[str]] = {}
    for user, question, answer in rows:
        stored.setdefault((user, question), []).append(answer)
    seen = [r for r in records if r["success"]]
    for r in seen:
        got = stored.get((r["user"], r["question"]), [])
        if len(got) != 1:
            problems.append(f"{r['user']}: {len(got)} stored answers to {r['question']!r}")
        elif r["answer"] is not None and got[0].strip() != unescape_chat(r["answer"]).strip():  # shown: stripped
            problems.append(f"{r['user']}: stored text differs for {r['question']!r}")
    extra = set(stored) - {(r["user"], r["question"]) for r in seen}
    problems += [f"{u}: an answer to {q!r} is stored but was not seen completed" for u, q in sorted(extra)]
    return {"answers": len(seen), "stored": len(rows), "problems": problems}


def write_users(path: Path, names: list[str], password: str = PASSWORD) -> Path:
    from feedback import auth

    for name in names:
        auth.add_user(path, name, password, "user", iterations=1000)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--newcomers", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    from agent.settings import Settings
    from tests.conftest import running_app

    root = Path(tempfile.mkdtemp(prefix="kaizen-load-"))
    users = [f"u{i:02d}" for i in range(1, args.sessions + 1)]
    new = [f"new{i}" for i in range(1, args.newcomers + 1)]
    users_file = write_users(root / "users.json", ["idle", *users, *new])
    from agent.model import resolve_base

    settings = Settings.from_env()  # the bundled default is converted once, in KAIZEN_TEST_MODELS_DIR or the data dir
    base = resolve_base(settings.base_model, Path(os.environ.get("KAIZEN_TEST_MODELS_DIR") or settings.models_dir))
    with running_app(root / "data", Path(base), KAIZEN_AUTH_FILE=str(users_file),
                     KAIZEN_MAX_NEW_TOKENS=str(args.new_tokens)) as server:
        result = run_load(server["url"], session_users=users, newcomer_users=new)
        result["stored"] = check_stored(server["db"], result["records"])
    result.pop("records")
    result.update(bench="load_sessions", new_tokens=args.new_tokens, cpu_count=os.cpu_count())
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
