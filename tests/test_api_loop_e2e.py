"""The adaptation loop fed only through the OpenAI-compatible API, on the real default model, CPU: scripted users
ask through `/v1/chat/completions` and send corrections into a house style through `/v1/feedback` → `kaizen
adapt` (datasets, LoRA training, gate, promotion) → the running app's API serves the promoted version without a
restart (`/v1/models` says so, answers record it) and its answers to unseen prompts follow the style far more
often than before. The UI's own loop: tests/test_loop_e2e.py."""
import time

import httpx
import pytest

from adapters.lab_tasks import HOUSE_PHRASE, follows_style, house_style
from tests.conftest import running_app
from tests.test_loop_e2e import adapt_and_promote, style_prompts

pytestmark = pytest.mark.slow
EDITORS = 4


def test_house_style_from_api_corrections_is_learned_promoted_and_served(shared_data, base_model_dir, tmp_path):
    import openai

    from agent.settings import Settings
    from feedback import api_store
    from feedback.store import Store

    pairs, unseen = style_prompts(shared_data)
    data = tmp_path / "data"
    store = Store.from_settings(Settings(data_dir=data, base_model=str(base_model_dir)))
    keys = [api_store.create_key(store, store.ensure_user(f"editor-{i}")) for i in range(EDITORS)]
    store.close()

    def ask(prompts, key=keys[0]) -> list:
        sdk = openai.OpenAI(base_url=app["url"] + "v1", api_key=key, max_retries=0)
        return [sdk.chat.completions.create(model="kaizen", messages=[{"role": "user", "content": p}],
                                            extra_body={"rag": "off", "template": "plain"}) for p in prompts]

    def rate(outs) -> float:
        return sum(follows_style(o.choices[0].message.content) for o in outs) / len(outs)

    with running_app(data, base_model_dir, KAIZEN_MAX_NEW_TOKENS="24") as app:
        base_rate = rate(ask(unseen))
        for i, (prompt, reference) in enumerate(pairs):  # each editor asks, then corrects the answer
            key = keys[i % EDITORS]
            [out] = ask([prompt], key)
            r = httpx.post(app["url"] + "v1/feedback", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                           json={"id": out.id, "correction": house_style(reference)})
            assert r.status_code == 200, r.text

        version = adapt_and_promote(data, base_model_dir, timeout_s=2400)

        auth = {"Authorization": f"Bearer {keys[0]}"}
        deadline = time.time() + 60  # the app picks the promotion up by itself (no restart)
        while True:
            models = httpx.get(app["url"] + "v1/models", headers=auth, timeout=30).json()["data"]
            if models[0]["kaizen"]["serves"] == version:
                break
            assert time.time() < deadline, f"/v1/models still says {models[0]['kaizen']}"
            time.sleep(2)
        assert f"kaizen:{version}" in [m["id"] for m in models]
        outs = ask(unseen)
        assert {o.model_extra["kaizen"]["adapter"] for o in outs} == {version}
        adapter_rate = rate(outs)

    print(f"house style '{HOUSE_PHRASE}' on {len(unseen)} unseen prompts via the API: base {base_rate:.0%}, "
          f"{version} {adapter_rate:.0%}")
    assert base_rate <= 0.2
    assert adapter_rate >= 0.7 and adapter_rate - base_rate >= 0.5
