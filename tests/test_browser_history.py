"""A real browser against the running app: the history sidebar (reload, reopen, rename, delete) and the thumbs
a restored conversation shows, on its own answers and on the ones that replace them."""

import pytest

from tests.test_browser import answer_to, browser, bot_text, db_rows, page, send, status_has  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def history_item(page, title):
    return page.locator("#history label", has_text=title)


def test_history_sidebar_reload_restores_and_feedback_goes_to_the_restored_answer(page, app_server, tmp_path):
    """A reload reopens the conversation (its thumbs as stored); a 👎 on the restored answer is stored against
    that answer; the sidebar opens another conversation, renames one and deletes one (the record stays)."""
    send(page, "Name a colour of the sky, history test.")
    cid, answer_id, answer = answer_to(app_server, "Name a colour of the sky, history test.")
    page.wait_for_function("[...document.querySelectorAll('#history label')].some(l => l.innerText.includes('sky'))")
    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Like"]').last.click()
    status_has(page, "👍")
    page.reload()
    page.wait_for_selector("#message textarea")
    page.wait_for_function("document.querySelectorAll('[data-testid=\"bot\"]').length == 1")
    assert " ".join(answer.split())[:30] in " ".join(bot_text(page).split())
    assert page.locator('[aria-label="Liked"]').count() == 1  # the stored 👍 shows on the restored answer
    page.screenshot(path=str(tmp_path / "history-reloaded-1366.png"))
    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Dislike"]').last.click()  # changed on the restored answer
    status_has(page, "👎")
    assert [v for v, in db_rows(app_server, "select value from ratings where message_id=? order by id",
                                answer_id)] == [1, -1]

    page.click("#new-chat")
    page.wait_for_function("document.querySelectorAll('[data-testid=\"bot\"]').length == 0")
    send(page, "Name a fruit, second history test.")
    answer_to(app_server, "Name a fruit, second history test.")
    page.wait_for_function("[...document.querySelectorAll('#history label')].some(l => l.innerText.includes('second'))")
    assert history_item(page, "second history test").count() == 1
    history_item(page, "Name a colour of the sky").click()  # the first conversation again
    page.wait_for_function("[...document.querySelectorAll('[data-testid=\"user\"]')].some(u => "
                           "u.innerText.includes('colour of the sky'))")
    assert " ".join(answer.split())[:30] in " ".join(bot_text(page).split())
    assert page.locator('[aria-label="Disliked"]').count() == 1
    page.fill("#history-title input", "Sky colours")
    page.click("#history-rename")
    page.wait_for_function("[...document.querySelectorAll('#history label')].some(l => l.innerText.includes('Sky colours'))")
    assert db_rows(app_server, "select action, title from conversation_changes where conversation_id=?", cid) == [
        ("rename", "Sky colours")]
    history_item(page, "Sky colours").click()
    page.click("#history-delete")
    page.wait_for_function("![...document.querySelectorAll('#history label')].some(l => l.innerText.includes('Sky colours'))")
    assert page.locator('[data-testid="bot"]').count() == 0  # the open conversation was the deleted one
    assert db_rows(app_server, "select count(*) from messages where conversation_id=?", cid) == [(2,)]  # kept
    page.reload()
    page.wait_for_selector("#message textarea")
    page.wait_for_timeout(2000)
    assert page.locator('[data-testid="bot"]').count() == 0 and history_item(page, "Sky colours").count() == 0


def test_a_retried_or_replaced_answer_shows_its_own_thumbs_not_the_restored_ones(page, app_server):
    """A restored conversation shows its stored 👍; the retry's answer and, after an undo, a new question's answer
    take that position without it, and a 👍 on them stores +1 for them (not a retraction of the old one)."""
    send(page, "Name a kind of tree, thumbs test.")
    _, first_id, _ = answer_to(app_server, "Name a kind of tree, thumbs test.")
    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Like"]').last.click()
    status_has(page, "👍")
    page.reload()
    page.wait_for_selector("#message textarea")
    page.wait_for_function("document.querySelectorAll('[aria-label=\"Liked\"]').length == 1")  # as stored

    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Retry"]').last.click()
    page.wait_for_selector("#pick-row", state="visible", timeout=180_000)
    (retried_id,), = db_rows(app_server, "select max(id) from messages where role='assistant'")
    assert retried_id != first_id
    assert page.locator('[aria-label="Liked"]').count() == 0  # the new answer has no rating yet
    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Like"]').last.click()
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('👍')")
    assert db_rows(app_server, "select message_id, value from ratings where message_id in (?, ?) order by id",
                   first_id, retried_id) == [(first_id, 1), (retried_id, 1)]

    page.locator('[data-testid="bot"]').last.hover()
    page.locator('[aria-label="Undo"]').last.click()
    page.wait_for_function("document.querySelectorAll('[data-testid=\"bot\"]').length == 0")
    send(page, "Name a kind of flower, thumbs test.")
    assert page.locator('[aria-label="Liked"]').count() == 0, "a new answer shows the undone answer's 👍"
    _, third_id, _ = answer_to(app_server, "Name a kind of flower, thumbs test.")
    assert db_rows(app_server, "select count(*) from ratings where message_id=?", third_id) == [(0,)]
