"""Bounded ingest on a real Chroma store with the real embedder: one ingest per user at a time (a second is refused
in words), a document over KAIZEN_MAX_DOC_CHUNKS is refused before any embedding, and a long upload does not hold
the store: another user's upload and searches finish while the first one is still embedding."""
from __future__ import annotations

import threading

import pytest

from agent.ingest import IngestError
from agent.retrieval import KnowledgeBase
from agent.settings import Settings

LONG = " ".join(f"Paragraph {i} talks about the harbour, the lighthouse keeper and tide number {i}." * 3
                for i in range(150))


@pytest.fixture
def kb(tmp_path):
    return KnowledgeBase.from_settings(Settings(data_dir=tmp_path / "data"))


def test_a_document_over_the_chunk_limit_is_refused_before_embedding(tmp_path):
    kb = KnowledgeBase.from_settings(Settings(data_dir=tmp_path / "data", max_doc_chunks=3))
    with pytest.raises(IngestError, match=r"the limit is 3 per document \(KAIZEN_MAX_DOC_CHUNKS\)"):
        kb.add_text(LONG, "book.txt", owner="alice")
    assert kb.list("alice") == [] and kb.collection.count() == 0
    assert kb.add_text("A short note about lunch.", "note.txt", owner="alice")["chunks"] == 1


def test_one_ingest_per_user_and_others_go_on_meanwhile(kb):
    kb.add_text("Bob keeps bees on the roof of the library.", "bees.txt", owner="bob")
    embedding, release = threading.Event(), threading.Event()
    errors = []

    def step(frac, desc):  # alice's upload stops here, mid-embedding, until the others are done
        embedding.set()
        assert release.wait(120)

    def alice_upload():
        try:
            kb.add_text(LONG, "book.txt", progress=step, owner="alice")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    alice = threading.Thread(target=alice_upload)
    alice.start()
    try:
        assert embedding.wait(120), errors
        with pytest.raises(IngestError, match="you already have an upload being indexed \\(book.txt\\)"):
            kb.add_text("Another file of alice.", "second.txt", owner="alice")
        done = {}

        def bob_works():  # would wait for alice's whole upload if the store were locked while she embeds
            done["added"] = kb.add_text("Bob's hives gave nine jars of honey.", "honey.txt", owner="bob")
            done["hits"] = kb.search("honey jars", k=2, owner="bob")

        bob = threading.Thread(target=bob_works)
        bob.start()
        bob.join(120)
        assert not bob.is_alive(), "bob's upload and search waited for alice's upload"
        assert done["added"]["chunks"] == 1 and done["hits"][0].file == "honey.txt"
        assert alice.is_alive()  # still embedding: bob really went on meanwhile
    finally:
        release.set()
        alice.join(300)
    assert not errors, errors
    names = {d["name"] for d in kb.list("alice")}
    assert names == {"book.txt"}  # the refused second upload stored nothing
    assert kb.add_text("Now alice may upload again.", "third.txt", owner="alice")["chunks"] == 1
