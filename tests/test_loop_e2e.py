"""The whole adaptation loop on the real default model, CPU: users' edits into a house style → `kaizen adapt`
(datasets, LoRA training, evaluation gate, promotion) → the running app serves the adapter without a restart, and
its answers to prompts that were not in the feedback follow the style far more often than the base's did."""
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from adapters.lab_tasks import HOUSE_PHRASE, follows_style, oasst_first_turns, style_events
from agent.settings import Settings
from feedback.store import Store
from tests.conftest import ROOT, running_app

pytestmark = pytest.mark.slow
TRAIN_PROMPTS = 48
EVAL_PROMPTS = 12


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
    run = subprocess.run([sys.executable, "-m", "agent.cli", "adapt"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout_s)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    listing = subprocess.run([sys.executable, "-m", "agent.cli", "adapters", "list", "--json"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    promoted = [v for v in json.loads(listing.stdout)["versions"] if v["state"] == "active"]
    assert promoted, f"the gate did not promote: {run.stdout[-2000:]}"
    return promoted[0]["version"]


def test_house_style_from_edits_is_learned_promoted_and_served(shared_data, base_model_dir, tmp_path):
    from gradio_client import Client

    pairs, unseen = style_prompts(shared_data)

    data = tmp_path / "data"
    settings = Settings(data_dir=data, base_model=str(base_model_dir), adapt_min_events=20)
    store = Store.from_settings(settings)
    assert style_events(store, pairs) == len(pairs)  # scripted users edit every answer into the house style
    store.close()

    with running_app(data, base_model_dir, KAIZEN_MAX_NEW_TOKENS="24", KAIZEN_ENGINE="llamacpp") as app:
        client = Client(app["url"], verbose=False)
        base_rate = rate(ask_all(client, unseen))

        version = adapt_and_promote(data, base_model_dir)
        meta = json.loads((data / "adapters" / version / "meta.json").read_text())
        assert meta["gguf"]["file"] == "lora.gguf" and len(meta["gguf"]["sha256"]) == 64  # for llama.cpp
        assert meta["parity"]["passed"] and meta["parity"]["top1"] >= 0.9, meta["parity"]  # it reproduces peft

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

    print(f"house style '{HOUSE_PHRASE}' on {len(unseen)} unseen prompts: base {base_rate:.0%}, "
          f"{version} {adapter_rate:.0%}")
    assert base_rate <= 0.2
    assert adapter_rate >= 0.7 and adapter_rate - base_rate >= 0.5
