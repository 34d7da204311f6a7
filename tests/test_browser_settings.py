"""The chat's own settings in Chromium: the temperature and max-tokens sliders decide the next answer, are stored
with it, shown in Answer details and brought back by a reload; a forged value sent to /chat directly is refused in
words. Real model, real app (the session's `app_server`)."""
import json
import time

import pytest

from tests.test_browser import browser, db_rows, page, send, status_has, stored_answer  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def set_slider(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(300)


def test_chat_settings_temperature_and_length_are_used_stored_and_shown_in_answer_details(page, app_server, tmp_path):
    """The chat's own temperature and max tokens (Settings accordion) decide the next answer, are stored with it,
    and the closed "Answer details" shows them with its time and tokens; a reload brings them back with the
    conversation."""
    set_slider(page, "temperature", 0.7)
    set_slider(page, "max-tokens", 16)
    (before,), = db_rows(app_server, "select coalesce(max(id), 0) from messages")
    send(page, "Write a long story about a lighthouse keeper.")
    answer_id, _ = stored_answer(app_server, before)
    (decoding, tokens), = db_rows(app_server, "select decoding, completion_tokens from messages where id=?", answer_id)
    assert json.loads(decoding) == {"temperature": 0.7, "top_p": 0.95, "seed": None, "max_new_tokens": 16}
    assert tokens == 16
    status_has(page, "cut off at 16 tokens")
    details = page.locator("#answer-details")
    assert not details.is_visible()  # on demand: the accordion starts closed
    page.locator("#answer-details-box button").first.click()
    page.wait_for_function("document.querySelector('#answer-details')?.innerText.includes('temperature 0.7')",
                           timeout=15_000)
    text = details.inner_text()
    assert "16 out (cap 16)" in text and "template: plain" in text and "adapter: base" in text
    page.screenshot(path=str(tmp_path / "answer-details.png"), full_page=True)
    # a reload reopens the conversation with its own settings, not the server's defaults
    page.reload()
    page.wait_for_function("document.querySelectorAll('[data-testid=\"bot\"]').length == 1")
    page.wait_for_function("document.querySelector('#max-tokens input[type=number]')?.value == '16'",
                           timeout=15_000)
    assert float(page.locator("#temperature input[type=number]").input_value()) == 0.7
    page.screenshot(path=str(tmp_path / "settings-after-reload.png"), full_page=True)
    page.locator("#answer-details-box button").first.click()  # closed again after the reload
    # back to greedy: the next answer is decoded greedily and says so
    set_slider(page, "temperature", 0)
    send(page, "And what did he eat?")
    second_id, _ = stored_answer(app_server, answer_id)
    (decoding,), = db_rows(app_server, "select decoding from messages where id=?", second_id)
    assert json.loads(decoding)["temperature"] == 0
    page.wait_for_function("document.querySelector('#answer-details')?.innerText.includes('greedy')", timeout=15_000)


def test_a_forged_temperature_or_length_is_refused_in_words_and_stores_nothing(app_server):
    """The sliders' ranges hold on the server: the /chat endpoint called directly with temperature 9.9 or a
    million tokens answers with the allowed range, and no message is stored (Gradio's Slider checks its bounds
    first; ui/chat.py chat_options checks again for every other caller)."""
    from tests import raw_client as R

    c = R.client(app_server["url"])
    cfg = R.config(c)
    [chat] = [e for e in R.endpoints(cfg) if e["api_name"] == "chat"]
    (before,), = db_rows(app_server, "select count(*) from messages")
    for temp, length, bound in ((9.9, 64, "1.5"), (0.5, 10**6, "1024")):
        data = R.default_inputs(cfg, chat)
        data[0], data[-2], data[-1] = "hello", temp, length
        result = R.call(c, chat["fn_index"], data)
        said = R.error_text(result).replace(",", "")
        assert result["success"] is False and bound in said and ("maximum" in said or "must be" in said), result
    (after,), = db_rows(app_server, "select count(*) from messages")
    assert after == before


def test_a_desktop_window_made_phone_narrow_closes_the_panels(browser, app_server, tmp_path):
    """Open on a desktop, the sidebar and the chat settings close when the window narrows to a phone's width (the
    message box on screen); a panel opened again on the narrow window stays open when the keyboard resizes it; and
    widened again, the window reopens what narrowing closed."""
    on_screen = """(() => { const r = document.querySelector('#message textarea').getBoundingClientRect();
                            return r.width > 200 && r.left >= 0 && r.bottom <= innerHeight; })()"""
    pg = browser.new_page(viewport={"width": 1366, "height": 900})
    try:
        pg.goto(app_server["url"])
        pg.wait_for_selector("#message textarea")
        pg.wait_for_function("document.querySelector('#history-sidebar').classList.contains('open')")
        assert pg.locator("#chat-settings .label-wrap.open").count() == 1
        pg.set_viewport_size({"width": 390, "height": 844})
        pg.wait_for_function("!document.querySelector('#history-sidebar').classList.contains('open')")
        assert pg.locator("#chat-settings .label-wrap.open").count() == 0
        pg.wait_for_function(on_screen, timeout=10_000)  # the layout settles with the message box in view
        pg.screenshot(path=str(tmp_path / "resized-390.png"))
        pg.locator("#history-sidebar .toggle-button").click()  # the user opens it on purpose
        pg.set_viewport_size({"width": 390, "height": 600})  # e.g. the phone's keyboard shows
        pg.wait_for_timeout(500)
        assert "open" in pg.locator("#history-sidebar").get_attribute("class")
        pg.set_viewport_size({"width": 1366, "height": 900})
        pg.wait_for_function("!!document.querySelector('#chat-settings .label-wrap.open')")
        assert "open" in pg.locator("#history-sidebar").get_attribute("class")
        # the open sidebar pushes the page aside again (Gradio slides the padding in over 0.3 s), not over it
        pg.wait_for_function("""document.querySelector('#chatbot').getBoundingClientRect().left >=
                                document.querySelector('#history-sidebar').getBoundingClientRect().right""",
                             timeout=5_000)
        pg.screenshot(path=str(tmp_path / "widened-1366.png"))
    finally:
        pg.close()


def test_a_question_typed_while_an_answer_streams_stays_in_the_box_and_is_sent_next(page, app_server, tmp_path):
    """What a person types while an answer is still streaming is not wiped when the answer ends (only the first
    frame empties the box); Enter pressed while it streams sends nothing (the box keeps the text), Enter after it
    sends it as the next question of the same conversation."""
    set_slider(page, "max-tokens", 400)
    page.locator("#answer-details-box button").first.click()  # open: it shows when the answer's chain has run
    (before,), = db_rows(app_server, "select coalesce(max(id), 0) from messages")
    page.fill("#message textarea", "Write a long story about a lighthouse keeper and his cat.")
    page.press("#message textarea", "Enter")
    page.wait_for_function("document.querySelector('#message textarea')?.value === ''")  # the first frame
    page.wait_for_function("(document.querySelector('[data-testid=\"bot\"]') || {}).innerText", timeout=180_000)
    page.locator("#message textarea").press_sequentially("And what was the cat's name?")
    typed_at = " ".join(page.locator('[data-testid="bot"]').last.inner_text().split())
    page.press("#message textarea", "Enter")  # Enter while the answer streams: not sent, not lost
    answer_id, _ = stored_answer(app_server, before)
    (answer,), = db_rows(app_server, "select content from messages where id=?", answer_id)
    page.wait_for_function("document.querySelector('#answer-details')?.textContent.includes('(cap 400)')",
                           timeout=30_000)  # the chain after the answer (pick row, history, details) has run
    assert len(" ".join(answer.split())) > len(typed_at)  # frames kept arriving after the typing
    assert page.locator("#message textarea").input_value() == "And what was the cat's name?"
    assert not db_rows(app_server, "select id from messages where content=?", "And what was the cat's name?")
    page.screenshot(path=str(tmp_path / "typed-ahead.png"))
    page.press("#message textarea", "Enter")
    deadline = time.time() + 60
    while not db_rows(app_server, "select id from messages where role='user' and id > ? and content=?",
                      answer_id, "And what was the cat's name?"):
        assert time.time() < deadline, "the typed-ahead question was not sent"
        time.sleep(0.5)
    (conv_first,), = db_rows(app_server, "select conversation_id from messages where id=?", answer_id)
    (conv_next,), = db_rows(app_server, "select conversation_id from messages where content=? order by id desc "
                                        "limit 1", "And what was the cat's name?")
    assert conv_next == conv_first
    stored_answer(app_server, answer_id)  # let its answer end before the next test
    set_slider(page, "max-tokens", 40)
