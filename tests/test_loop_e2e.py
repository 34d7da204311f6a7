"""The whole adaptation loop on the real default model, CPU: users' corrections into a house style, made in the
chat and sent through the OpenAI-compatible API's `/v1/feedback` → `kaizen adapt` (datasets, LoRA training,
evaluation gate, promotion) → the running app serves the adapter without a restart, to the chat and to the API,
and its answers to prompts that were not in the feedback follow the style far more often than the base's did.
(One training run for both feedback paths: each run costs about 6 minutes of CPU.)"""
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from lab.tasks import HOUSE_PHRASE, follows_style, house_style, oasst_first_turns, style_events
from agent.settings import Settings
from feedback.store import Store
from tests.conftest import ROOT, running_app

pytestmark = pytest.mark.slow
TRAIN_PROMPTS = 48
EVAL_PROMPTS = 12
API_EDITORS = 4
API_CHECKS = 4  # unseen prompts asked again through the API once the version is served


def ask_all(client, prompts) -> list[str]:
    answers = []
    for p in prompts:
        client.reset_session()  # a new chat each time: no earlier answer in the context
        chat, _, status = client.predict(p, "plain", "off", "active", api_name="/chat")
        assert status == "" or status.startswith("… cut off at"), status  # a capped answer says so
        answers.append(chat[-1]["content"][0]["text"])
    return answers


def rate(answers) -> float:
    return sum(follows_style(a) for a in answers) / len(answers)


def style_prompts(shared_data) -> tuple[list[tuple[str, str]], list[str]]:
    """(TRAIN_PROMPTS oasst first turns (prompt, reply) to edit into the house style, EVAL_PROMPTS unseen prompts
    of the lottery to measure it on)."""
    trees = [json.loads(line) for line in (shared_data / "oasst_en_100" / "en_100_tree.jsonl").open()]
    pairs = oasst_first_turns(trees)[:TRAIN_PROMPTS]
    seen = {p for p, _ in pairs}
    lottery = [json.loads(line) for line in (shared_data / "oasst_en_100" / "prompt_lottery_en_250_text.jsonl").open()]
    unseen = [t.strip() for t in lottery if isinstance(t, str) and t.strip() not in seen and len(t) < 300]
    return pairs, unseen[:EVAL_PROMPTS]


def adapt_and_promote(data, base_model_dir, timeout_s: int = 1500) -> str:
    """`kaizen adapt` on `data` (train at 20 events); the version the gate promoted (asserted)."""
    env = dict(os.environ, KAIZEN_DATA_DIR=str(data), KAIZEN_BASE_MODEL=str(base_model_dir),
               KAIZEN_ADAPT_MIN_EVENTS="20", KAIZEN_ENGINE="llamacpp")  # GGUF LoRA + parity check
    run = subprocess.run([sys.executable, "-m", "cli.main", "adapt"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout_s)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    listing = subprocess.run([sys.executable, "-m", "cli.main", "adapters", "list", "--json"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    promoted = [v for v in json.loads(listing.stdout)["versions"] if v["state"] == "active"]
    assert promoted, f"the gate did not promote: {run.stdout[-2000:]}"
    return promoted[0]["version"]


def test_house_style_from_edits_is_learned_promoted_and_served(shared_data, base_model_dir, tmp_path):
    """One training run for both ways feedback arrives: half the corrections are the UI's edits (replayed through
    the store), half are sent by API clients to `/v1/feedback` after asking through `/v1/chat/completions`. The
    promoted version is then served by the running app to the chat UI and to the API without a restart."""
    import httpx
    import openai
    from gradio_client import Client

    from feedback import api_store

    pairs, unseen = style_prompts(shared_data)
    ui_pairs, api_pairs = pairs[: len(pairs) // 2], pairs[len(pairs) // 2:]

    data = tmp_path / "data"
    settings = Settings(data_dir=data, base_model=str(base_model_dir), adapt_min_events=20)
    store = Store.from_settings(settings)
    assert style_events(store, ui_pairs) == len(ui_pairs)  # scripted users edit every answer into the house style
    keys = [api_store.create_key(store, store.ensure_user(f"api-editor-{i}")) for i in range(API_EDITORS)]
    store.close()

    def api_ask(prompts, key=keys[0]) -> list:
        sdk = openai.OpenAI(base_url=app["url"] + "v1", api_key=key, max_retries=0)
        return [sdk.chat.completions.create(model="kaizen", messages=[{"role": "user", "content": p}],
                                            extra_body={"rag": "off", "template": "plain"}) for p in prompts]

    with running_app(data, base_model_dir, KAIZEN_MAX_NEW_TOKENS="24", KAIZEN_ENGINE="llamacpp") as app:
        client = Client(app["url"], verbose=False)
        base_rate = rate(ask_all(client, unseen))
        for i, (prompt, reference) in enumerate(api_pairs):  # each API editor asks, then corrects the answer
            key = keys[i % API_EDITORS]
            [out] = api_ask([prompt], key)
            r = httpx.post(app["url"] + "v1/feedback", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                           json={"id": out.id, "correction": house_style(reference)})
            assert r.status_code == 200, r.text
        with sqlite3.connect(app["db"]) as db:  # the API's corrections are stored as edits of the model's answers
            (api_edits,), = db.execute("select count(*) from edits e join users u on u.id = e.user_id "
                                       "join messages m on m.id = e.message_id where u.name like 'api-editor-%' "
                                       "and m.model != 'oasst'").fetchall()
        assert api_edits == len(api_pairs)

        version = adapt_and_promote(data, base_model_dir, timeout_s=2400)
        meta = json.loads((data / "adapters" / version / "meta.json").read_text())
        assert meta["gguf"]["file"] == "lora.gguf" and len(meta["gguf"]["sha256"]) == 64  # for llama.cpp
        assert meta["parity"]["passed"] and meta["parity"]["top1"] >= 0.9, meta["parity"]  # it reproduces peft
        # the edits open with one phrase: the first SFT attempt mixes in replay rows (adapters/stages.first_recipe)
        assert meta["recipe"]["replay"] == 0.25, meta["recipe"]

        deadline = time.time() + 60  # the app picks the promotion up by itself (no restart)
        while True:
            answers = ask_all(client, unseen[:1])
            with sqlite3.connect(app["db"]) as db:
                (served,), = db.execute("select adapter from messages where role='assistant' "
                                        "order by id desc limit 1").fetchall()
            if served == version:
                break
            assert time.time() < deadline, f"the app still serves {served!r}, not {version}"
            time.sleep(2)
        adapter_rate = rate(answers + ask_all(client, unseen[1:]))

        auth = {"Authorization": f"Bearer {keys[0]}"}
        models = httpx.get(app["url"] + "v1/models", headers=auth, timeout=30).json()["data"]
        assert models[0]["kaizen"]["serves"] == version and f"kaizen:{version}" in [m["id"] for m in models]
        outs = api_ask(unseen[:API_CHECKS])
        assert {o.model_extra["kaizen"]["adapter"] for o in outs} == {version}
        api_rate = sum(follows_style(o.choices[0].message.content) for o in outs) / len(outs)

    print(f"house style '{HOUSE_PHRASE}' on {len(unseen)} unseen prompts: base {base_rate:.0%}, "
          f"{version} {adapter_rate:.0%} in the chat, {api_rate:.0%} of {len(outs)} through the API")
    assert base_rate <= 0.2
    assert adapter_rate >= 0.7 and adapter_rate - base_rate >= 0.5
    assert api_rate >= 0.5
