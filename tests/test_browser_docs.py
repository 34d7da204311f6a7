"""A big upload in Chromium, as a person would do it: it is indexed in a background job, so reloading the page in
the middle loses nothing (the Documents tab shows the job's progress, then its outcome), and the chat answers while
it runs. The document is real text (SQuAD 2.0 dev passages, ~900 chunks) on the real embedder and Chroma store."""
import contextlib
import json
import time
from pathlib import Path

import pytest

from tests.test_browser import browser, db_rows, page, send  # noqa: F401 (browser, page: fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def squad_text(shared_data, max_chars: int) -> str:
    dev = json.loads((shared_data / "squad2" / "dev-v2.0.json").read_text(encoding="utf-8"))
    parts, size = [], 0
    for article in dev["data"]:
        for para in article["paragraphs"]:
            parts.append(para["context"])
            size += len(para["context"]) + 2
            if size >= max_chars:
                return "\n\n".join(parts)
    return "\n\n".join(parts)


def thread_nices(pid: int) -> list[int]:
    """The nice value of each of a process's threads (field 19 of /proc/PID/task/TID/stat)."""
    nices = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            nices.append(int(stat.read_text().rsplit(")", 1)[1].split()[16]))
    return nices


def status(page) -> str:
    return page.inner_text("#docs-status")


def test_a_big_upload_survives_a_reload_shows_its_progress_and_the_chat_answers_meanwhile(
        page, app_server, shared_data, tmp_path):
    doc = tmp_path / "squad-passages.txt"
    doc.write_text(squad_text(shared_data, 800_000), encoding="utf-8")
    page.get_by_role("tab", name="Documents").click()
    page.set_input_files("#docs-upload input[type=file]", str(doc))
    page.wait_for_timeout(3000)  # the job is reading and embedding by now
    page.reload()  # the upload request goes away with the page; its job does not
    page.wait_for_selector("#message textarea")
    page.get_by_role("tab", name="Documents").click()
    page.wait_for_function("document.querySelector('#docs-status')?.innerText.includes('in the background')",
                           timeout=60_000)
    assert "Indexing squad-passages.txt" in status(page) and "%" in status(page)
    # the job (and the torch threads it started) runs below the app, at KAIZEN_BACKGROUND_NICE (19): the answers
    # go first (agent/priority.py)
    assert 19 in thread_nices(app_server["proc"].pid), thread_nices(app_server["proc"].pid)
    page.screenshot(path=str(tmp_path / "upload-progress-after-reload.png"), full_page=True)

    page.get_by_role("tab", name="Chat").click()  # the chat answers while the upload is indexed
    page.locator("#rag label:has-text('off')").click()
    (before,), = db_rows(app_server, "select coalesce(max(id), 0) from messages")
    send(page, "Say hello in French.")
    deadline = time.time() + 240
    while not db_rows(app_server, "select id from messages where role='assistant' and id > ?", before):
        assert time.time() < deadline, "no answer while the upload was indexed"
        time.sleep(0.5)

    page.get_by_role("tab", name="Documents").click()
    page.wait_for_function("document.querySelector('#docs-status')?.innerText.includes('added')", timeout=600_000)
    assert "`squad-passages.txt`: added" in status(page) or "squad-passages.txt: added" in status(page)
    page.wait_for_function("document.querySelector('#docs-table')?.innerText.includes('squad-passages.txt')",
                           timeout=30_000)
    page.screenshot(path=str(tmp_path / "upload-done.png"), full_page=True)
    # leave the shared app as it was: the other browser tests' answers must not find these passages
    page.click("#docs-pick input")
    page.get_by_role("option", name="squad-passages.txt").first.click()
    page.click("#docs-delete")
    page.wait_for_function("document.querySelector('#docs-status')?.innerText.includes('Deleted')", timeout=60_000)
