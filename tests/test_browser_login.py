"""Login mode in Chromium, as two people sharing one computer would use it: Alice (admin) signs in through Gradio's
login page and chats; she signs out and Bob (a user) signs in in the same browser (same localStorage, which still
names Alice's open conversation). Bob sees none of Alice's conversation, neither in the chat nor in the history
sidebar, and no Adapters or Lab tab; his own question is stored as his; Alice, signing in again elsewhere, lists
only her own conversation. The real app (`kaizen serve`, a tiny base) in a subprocess; the login file is real."""
from __future__ import annotations

import os
import sqlite3
import time

import pytest

from tests.test_authz_app import PASSWORDS, login_app  # noqa: F401 (the module's app: alice admin, bob user)
from tests.test_browser import ARGS, CHROMIUM
from tests.test_browser_history import history_item

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ALICE_Q = "Quillfeather here: where do the herons nest?"
BOB_Q = "Otterby asks: where do otters sleep?"


def sign_in(page, url, name):
    page.goto(url)
    page.wait_for_selector("input[type=password]", timeout=60_000)
    page.locator("input[type=text]").first.fill(name)
    page.locator("input[type=password]").fill(PASSWORDS[name])
    page.locator("button", has_text="Login").click()
    page.wait_for_selector("#message textarea", timeout=60_000)


def owner_of(db, question):
    """The user name of the conversation holding `question`, once its answer is stored (None until then)."""
    with sqlite3.connect(db) as c:
        row = c.execute("select u.name from messages q join messages a on a.parent_id = q.id and a.role = 'assistant' "
                        "join conversations v on v.id = q.conversation_id join users u on u.id = v.user_id "
                        "where q.content = ?", (question,)).fetchone()
    return row and row[0]


def ask(page, db, question):
    page.fill("#message textarea", question)
    page.press("#message textarea", "Enter")
    deadline = time.time() + 180
    while owner_of(db, question) is None:
        assert time.time() < deadline, f"no answer to {question!r} was stored"
        page.wait_for_timeout(250)
    page.wait_for_function(f"[...document.querySelectorAll('#history label')].some(l => "
                           f"l.innerText.includes({question[:12]!r}))", timeout=30_000)


def tab_shown(page, name) -> bool:
    return page.get_by_role("tab", name=name).count() > 0 and page.get_by_role("tab", name=name).first.is_visible()


def wait_tab(page, name, timeout=30):
    deadline = time.time() + timeout
    while not tab_shown(page, name):
        assert time.time() < deadline, f"the {name} tab is not shown"
        page.wait_for_timeout(250)


def test_two_people_on_one_browser_see_only_their_own_conversations(login_app, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (`make test` installs it)")
    from playwright.sync_api import sync_playwright

    url, db = login_app["url"], login_app["db"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            shared = browser.new_context(viewport={"width": 1366, "height": 900})
            page = shared.new_page()
            sign_in(page, url, "alice")
            wait_tab(page, "Adapters")  # the page load shows the admin tabs to an admin
            wait_tab(page, "Lab")
            page.get_by_role("tab", name="Adapters").click()  # and they work: the registered version is listed
            page.wait_for_function(f"document.body.innerText.includes({login_app['version']!r})", timeout=30_000)
            page.get_by_role("tab", name="Chat").click()
            ask(page, db, ALICE_Q)
            assert owner_of(db, ALICE_Q) == "alice"
            page.reload()  # her open conversation comes back (its id is in this browser's localStorage)
            page.wait_for_function("[...document.querySelectorAll('[data-testid=\"user\"]')].some(u => "
                                   "u.innerText.includes('Quillfeather'))", timeout=30_000)
            page.screenshot(path=str(tmp_path / "alice.png"), full_page=True)

            page.goto(url + "logout")  # signs out; the browser keeps its localStorage
            page.wait_for_selector("input[type=password]", timeout=60_000)
            assert page.evaluate("localStorage.getItem('kaizen-open-conversation')"), \
                "the browser should still name Alice's open conversation (what Bob's page load sends)"
            sign_in(page, url, "bob")
            page.wait_for_timeout(3000)  # the page load and the history restore have run
            body = page.locator("body").inner_text()
            assert "Quillfeather" not in body, "Bob's page shows Alice's conversation"
            assert page.locator('[data-testid="bot"]').count() == 0
            assert history_item(page, "Quillfeather").count() == 0
            assert not tab_shown(page, "Adapters") and not tab_shown(page, "Lab")
            ask(page, db, BOB_Q)
            assert owner_of(db, BOB_Q) == "bob" and owner_of(db, ALICE_Q) == "alice"
            page.reload()
            page.wait_for_function("[...document.querySelectorAll('[data-testid=\"user\"]')].some(u => "
                                   "u.innerText.includes('Otterby'))", timeout=30_000)
            assert "Quillfeather" not in page.locator("body").inner_text()
            page.screenshot(path=str(tmp_path / "bob-after-alice.png"), full_page=True)

            other = browser.new_context(viewport={"width": 390, "height": 844}).new_page()  # Alice on her phone
            sign_in(other, url, "alice")
            other.wait_for_function("[...document.querySelectorAll('#history label')].some(l => "
                                    "l.innerText.includes('Quillfeather'))", timeout=30_000)
            assert history_item(other, "Otterby").count() == 0
            assert "Otterby" not in other.locator("body").inner_text()
            other.screenshot(path=str(tmp_path / "alice-phone.png"), full_page=True)
        finally:
            browser.close()
