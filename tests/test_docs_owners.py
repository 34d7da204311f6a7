"""Documents per owner on a real Chroma store with the real embedder: B never gets A's chunk (hybrid, BM25, dense,
the reranker's pool), cannot list or delete it, the same file of two users is two documents, the shared library is
read by all and written by admins, and chunks from before owners become the local user's."""
from __future__ import annotations

import pytest

from agent.retrieval import DEFAULT_OWNER, SHARED, KnowledgeBase, owner_key
from agent.settings import Settings
from ui.docs import delete_doc, discard_upload, table_rows

SECRET = "The launch code for project Nightingale is amber-falcon-42, stored in the vault under the old mill."
BOB = "Bob's allotment grows leeks, beans and a prize-winning marrow beside the railway embankment."
COMMON = "The office kitchen is cleaned every Friday afternoon by whoever booked the meeting room last."
SHARED_TEXT = "The company handbook says holidays are booked through the staff portal two weeks ahead."


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    data = tmp_path_factory.mktemp("owners")
    kb = KnowledgeBase.from_settings(Settings(data_dir=data))
    kb.add_text(SECRET, "secret.txt", owner="alice")
    kb.add_text(COMMON, "kitchen.txt", owner="alice")
    kb.add_text(BOB, "allotment.txt", owner="bob")
    kb.add_text(SHARED_TEXT, "handbook.txt", shared=True)
    return kb


def alice_ids(kb) -> set[str]:
    return {c["id"] for c in kb._chunks if c["owner"] == owner_key("alice")}


def test_b_never_gets_a_chunk_of_a(kb):
    secret_doc = next(d["doc_id"] for d in kb.list("alice") if d["name"] == "secret.txt")
    for query in (SECRET, "launch code Nightingale amber falcon", "vault old mill"):
        for mode in ("hybrid", "bm25", "dense"):
            hits = kb.search(query, k=10, mode=mode, owner="bob")
            assert secret_doc not in {h.doc_id for h in hits}, (query, mode)
            assert all("Nightingale" not in h.text for h in hits)
            assert {h.file for h in hits} <= {"allotment.txt", "handbook.txt"}
        ids, _ = kb.candidates(query, owner="bob")
        assert not set(ids) & alice_ids(kb)
    assert kb.search(SECRET, k=1, owner="alice")[0].doc_id == secret_doc  # A finds it


def test_the_filter_is_inside_the_store_dense_and_bm25(kb):
    """Each first stage is filtered on its own: the Chroma `where` of the dense query, a BM25 index of B's scope."""
    qvec = kb.embedder.embed_query(SECRET)
    dense = kb._dense(qvec, 50, owner="bob")
    assert dense and not {i for i, _ in dense} & alice_ids(kb)
    chunks, bm25, by_id = kb._scope("bob")
    assert bm25.n == len(chunks) == len(by_id) and {c["owner"] for c in chunks} == {owner_key("bob"), SHARED}
    assert all("Nightingale" not in chunks[i]["text"] for i, _ in bm25.search("Nightingale launch code", 10))
    assert not set(kb._similarities(qvec, sorted(alice_ids(kb)), owner="bob"))


def test_listing_and_deleting_are_per_owner(kb):
    mine = {d["name"] for d in kb.list("bob")}
    assert mine == {"allotment.txt", "handbook.txt"}
    assert [r[4] for r in table_rows(kb, "bob") if r[1] == "handbook.txt"] == ["shared"]
    secret_doc = next(d["doc_id"] for d in kb.list("alice") if d["name"] == "secret.txt")
    assert not kb.has(secret_doc, "bob") and kb.has(secret_doc, "alice")
    assert kb.remove(secret_doc, "bob") is False
    assert delete_doc(kb, secret_doc, "bob") == "That document is no longer in the store."
    handbook = next(d["doc_id"] for d in kb.list("bob") if d["name"] == "handbook.txt")
    assert delete_doc(kb, handbook, "bob") == "Only an admin can delete a document of the shared library."
    assert kb.remove(handbook, "bob") is False  # not B's own either
    assert {d["name"] for d in kb.list("alice")} == {"secret.txt", "kitchen.txt", "handbook.txt"}


def test_the_same_file_of_two_users_is_two_documents(kb):
    r = kb.add_text(COMMON, "kitchen.txt", owner="bob")
    assert r["duplicate"] is False  # B learns nothing about A's documents from an upload
    a_doc = next(d["doc_id"] for d in kb.list("alice") if d["name"] == "kitchen.txt")
    assert r["doc_id"] != a_doc
    assert kb.remove(r["doc_id"], "bob") and kb.has(a_doc, "alice")  # B's delete leaves A's copy


def test_shared_library_written_by_admins_only_through_the_tab(kb, tmp_path):
    doc = kb.add_text("A shared note about the fire drill on Tuesdays.", "drill.txt", shared=True)
    assert "drill.txt" in {d["name"] for d in kb.list("bob")} and "drill.txt" in {d["name"] for d in kb.list("alice")}
    assert delete_doc(kb, doc["doc_id"], "alice", admin=True) == "Deleted `drill.txt`."
    assert "drill.txt" not in {d["name"] for d in kb.list("bob")}


def test_chunks_from_before_owners_become_the_local_users(tmp_path):
    """An old collection (chunks written without an owner) is adopted by the local user, in Chroma itself."""
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    kb = KnowledgeBase.from_settings(Settings(data_dir=tmp_path))
    node = TextNode(id_="0123456789abcdef:0", text="An old note about otters in the river.",
                    metadata={"name": "otters.txt", "chunk": 0, "chunks": 1, "added": "2025-01-01T00:00:00Z"},
                    relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="0123456789abcdef")})
    node.embedding = kb.embedder.embed(["An old note about otters in the river."])[0]
    kb.store.add([node])
    assert "owner" not in kb.collection.get(include=["metadatas"])["metadatas"][0]
    assert [d["name"] for d in kb.list()] == ["otters.txt"]  # DEFAULT_OWNER's
    assert kb.collection.get(where={"owner": owner_key(DEFAULT_OWNER)}, include=[])["ids"] == ["0123456789abcdef:0"]
    assert kb.search("otters", k=1)[0].file == "otters.txt" and kb.list("bob") == []
    assert kb.search("otters", k=3, owner="bob") == []


def test_no_owner_is_refused():
    with pytest.raises(ValueError, match="owner"):
        owner_key(None)
    with pytest.raises(ValueError, match="owner"):
        owner_key("")


def test_discard_upload_only_touches_gradios_upload_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    inside = tmp_path / "gradio" / "abc123" / "notes.txt"
    inside.parent.mkdir(parents=True)
    inside.write_text("x")
    outside = tmp_path / "keep.txt"
    outside.write_text("x")
    discard_upload(str(inside))
    discard_upload(str(outside))
    discard_upload(str(tmp_path / "gradio" / ".." / "keep.txt"))
    assert not inside.exists() and not inside.parent.exists() and outside.exists()
