"""`kaizen docs` and the Documents tab handlers on a real store (real embedder, local Chroma in tmp_path)."""
from __future__ import annotations

import json

import gradio as gr
import pytest

from cli import main as cli
from agent.retrieval import KnowledgeBase
from agent.settings import Settings
from ui.docs import build_docs_tab, delete_doc, table_rows, upload_files
from tests.test_ingest_files import BINARY, make_pdf


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KAIZEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KAIZEN_CHROMA_URL", "")
    return tmp_path / "data"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_docs_add_list_search_rm(data_dir, tmp_path, capsys):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "otters.txt").write_text("Sea otters hold hands while sleeping so they do not drift apart.")
    (folder / "sub" / "guide.pdf").write_bytes(make_pdf(["The museum opens at nine on Sundays."]))
    (folder / "ignored.png").write_bytes(BINARY)

    code, out, err = run(capsys, "docs", "add", str(folder))
    assert code == 0, err
    assert "otters.txt  added (1 chunks)" in out and "guide.pdf  added" in out and "png" not in out

    code, out, _ = run(capsys, "docs", "add", str(folder / "otters.txt"))
    assert code == 0 and "already present" in out

    code, out, _ = run(capsys, "docs", "list", "--json")
    docs = json.loads(out)
    assert sorted(d["name"] for d in docs) == ["guide.pdf", "otters.txt"]

    code, out, _ = run(capsys, "docs", "list")
    assert code == 0 and "otters.txt" in out and "CHUNKS" in out

    code, out, _ = run(capsys, "docs", "search", "when does the museum open on Sunday?")
    assert code == 0 and "[1] guide.pdf #0" in out and "route to documents (auto): True" in out

    otters = next(d for d in docs if d["name"] == "otters.txt")
    code, out, _ = run(capsys, "docs", "rm", otters["doc_id"][:6])  # a unique prefix is enough
    assert code == 0 and f"removed {otters['doc_id']}" in out
    code, out, _ = run(capsys, "docs", "list", "--json")
    assert [d["name"] for d in json.loads(out)] == ["guide.pdf"]


def test_docs_cli_errors_are_clear_and_partial_adds_keep_going(data_dir, tmp_path, capsys):
    good = tmp_path / "good.md"
    good.write_text("Kestrels hover while hunting voles.")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(BINARY)
    code, out, err = run(capsys, "docs", "add", str(bad), str(good), str(tmp_path / "missing.txt"))
    assert code == 1
    assert "refused" in err and "binary" in err and "no such file" in err
    assert "good.md  added" in out

    code, _, err = run(capsys, "docs", "rm", "ffffffffffff")
    assert code == 2 and "no document with id" in err
    code, out, _ = run(capsys, "docs", "list", "--json")
    assert [d["name"] for d in json.loads(out)] == ["good.md"]  # nothing removed by the failed rm


def test_documents_tab_handlers(data_dir, tmp_path):
    kb = KnowledgeBase.from_settings(Settings.from_env(max_upload_mb=1))
    ok = tmp_path / "herbs.txt"
    ok.write_text("Basil likes warmth; rosemary tolerates drought.")
    dup = tmp_path / "herbs-again.txt"
    dup.write_text("Basil likes warmth; rosemary tolerates drought.")
    locked = tmp_path / "locked.pdf"
    locked.write_bytes(make_pdf(["secret"], password="pw"))
    huge = tmp_path / "huge.md"
    huge.write_bytes(b"x " * 600_000)
    seen = []

    msg = upload_files(kb, [str(ok), str(dup), str(locked), str(huge)], lambda f, desc="": seen.append(f))
    lines = msg.splitlines()
    assert lines[0] == "- `herbs.txt`: added, 1 chunks"
    assert "already in the store" in lines[1]
    assert "refused" in lines[2] and "encrypted" in lines[2]
    assert "refused" in lines[3] and "limit is 1 MB" in lines[3]
    assert seen and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    rows = table_rows(kb)
    assert [r[1] for r in rows] == ["herbs.txt"] and rows[0][2] == 1

    assert delete_doc(kb, None) == "Pick a document to delete."
    assert delete_doc(kb, rows[0][0]) == "Deleted `herbs.txt`."
    assert delete_doc(kb, rows[0][0]) == "That document is no longer in the store."
    assert table_rows(kb) == [] and upload_files(kb, []) == "No file selected."


def test_documents_tab_builds_inside_a_tab(data_dir):
    kb = KnowledgeBase.from_settings(Settings.from_env())
    with gr.Blocks():
        with gr.Tab("Documents"):
            parts = build_docs_tab(kb)
    assert set(parts) == {"upload", "shared", "status", "table", "pick", "delete", "refresh", "timer"}
    assert isinstance(parts["upload"], gr.File) and parts["upload"].file_count == "multiple"
    assert ".svg" not in parts["upload"].file_types and ".pdf" in parts["upload"].file_types
