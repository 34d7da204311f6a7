"""The document store: a Chroma collection (through llama-index's ChromaVectorStore) plus a BM25 index rebuilt from
the same stored chunks; hybrid search pools the top chunks of both and ranks the pool with a small learned reranker
by default (agent/rerank.py; a convex score mix and weighted reciprocal rank are there on request, see HybridConfig).

Chroma is the single source of truth: chunk text, document name, date and chunk count live in its metadata; the
BM25 index and the document list are derived from it (rebuilt when the collection changes, also by another process
on a shared Chroma server). The uploaded file itself is kept, inert, under a generated name in `uploads_dir`.

Documents have an owner. Every chunk's metadata carries `owner`: "user:NAME" for a user's own documents, "shared"
for the shared library (everyone reads it; only admins write it: the caller checks the role, see
ui/authz.py). Reading (`search`, `candidates`, `list`, `has`) covers the caller's documents and the shared
library, and the filter is applied inside the store: a Chroma `where` on the dense query and a BM25 index built
from that owner's chunks only (so not even word statistics of another user's documents reach a query). Deleting
takes only the caller's own chunks (or the shared library's, with shared=True). A document id is a hash of the
content and the owner, so two users with the same file get two documents and an upload never says another user
already has it. Chunks stored before owners existed become DEFAULT_OWNER's ("local": the single local user,
also the owner the lab and the benchmarks use by default) the first time the store is read.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from agent import chroma, ingest, rerank
from agent.ingest import IngestError
from agent.ranking import (FOOTER, HEADER, Hit, HybridConfig, _Bm25, _cosine_from_chroma,  # noqa: F401
                           convex_fuse, format_sources, rrf_fuse)
from agent.settings import Settings

COLLECTION = "kaizen_docs"
DEFAULT_OWNER = "local"  # the single local user (ui.chat.LOCAL_USER); owner of chunks from before owners
SHARED = "shared"  # the owner key of the shared library
_SCOPES_KEPT = 32  # per-owner BM25 indexes kept in memory (rebuilt on demand)
# Stored copies get an inert extension: an uploaded .html is never written (or served) as .html.
STORED_EXT = {".txt": ".txt", ".md": ".md", ".markdown": ".md", ".pdf": ".pdf", ".docx": ".docx",
              ".html": ".html.txt", ".htm": ".html.txt"}

__all__ = ["DEFAULT_OWNER", "SHARED", "Hit", "HybridConfig", "KnowledgeBase", "IngestError", "convex_fuse",
           "format_sources", "owner_key", "rrf_fuse"]


def owner_key(owner: str | None, shared: bool = False) -> str:
    """The `owner` metadata value: "shared" for the shared library, else "user:NAME" (a user named "shared"
    cannot reach the library). ValueError for a missing owner: no caller reads or writes as nobody."""
    if shared:
        return SHARED
    if not isinstance(owner, str) or not owner:
        raise ValueError("documents need an owner (a user name)")
    return "user:" + owner


class KnowledgeBase:
    """The user's documents: add / list / remove / search. Thread-safe."""

    def __init__(self, collection, uploads_dir: Path, max_upload_mb: float = 20, embedder=None,
                 chunk_size: int = ingest.CHUNK_SIZE, hybrid: HybridConfig = HybridConfig(), device: str = "cpu",
                 max_chunks: int = 0):
        from llama_index.vector_stores.chroma import ChromaVectorStore

        self.collection = collection
        self.store = ChromaVectorStore(chroma_collection=collection)
        self.uploads_dir = Path(uploads_dir)
        self.max_upload_mb = max_upload_mb
        self._embedder = embedder
        self.device = device  # for the embedder: "cpu", "cuda" or "auto" (CUDA when present)
        self._splitter = None
        self.chunk_size = chunk_size
        self.hybrid = hybrid
        self._lock = threading.RLock()
        self._chunks: list[dict] = []  # id, doc_id, name, chunk, chunks, added, text, owner (every owner)
        self._all_bm25: _Bm25 | None = None  # over every chunk: built only when asked for (benchmarks)
        self._by_id: dict[str, int] = {}
        self._scopes: dict[tuple, tuple] = {}  # owner keys -> (chunks, bm25, by_id) of those owners' chunks
        self._seen = -1  # collection.count() the caches were built from
        self.write_batch: int | None = None  # chunks per Chroma add; None = the client's maximum
        self.max_chunks = max_chunks  # per document (KAIZEN_MAX_DOC_CHUNKS); 0 = no limit
        self._ingesting: dict[str, str] = {}  # user -> the upload they have being embedded (one at a time)
        self._ingest_guard = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, collection: str = COLLECTION, **kwargs) -> "KnowledgeBase":
        """Local persistent Chroma in settings.chroma_dir, or the server at settings.chroma_url."""
        col = chroma.open_collection(settings.chroma_url, Path(settings.chroma_dir), collection,
                                     Path(settings.uploads_dir))
        kwargs.setdefault("device", settings.device)
        kwargs.setdefault("hybrid", HybridConfig(method=settings.retriever))
        kwargs.setdefault("max_chunks", settings.max_doc_chunks)
        return cls(col, settings.uploads_dir, max_upload_mb=settings.max_upload_mb, **kwargs)

    @property
    def embedder(self):
        """Loaded on first use: listing and deleting documents need no model."""
        if self._embedder is None:
            from agent.embeddings import Embedder
            from agent.model import pick_device

            self._embedder = Embedder(pick_device(self.device)[0] if self.device != "cpu" else "cpu")
        return self._embedder

    @property
    def splitter(self):
        if self._splitter is None:
            self._splitter = ingest.make_splitter(self.embedder.tokenizer.tokenize, self.chunk_size)
        return self._splitter

    # -- caches derived from Chroma -----------------------------------------------------------------
    def _refresh(self, force: bool = False) -> None:
        with self._lock:
            count = self.collection.count()
            if not force and count == self._seen:
                return
            got = self.collection.get(include=["documents", "metadatas"]) if count else {"ids": []}
            chunks, unowned = [], []
            for cid, text, meta in zip(got["ids"], got.get("documents") or [], got.get("metadatas") or []):
                meta = meta or {}
                if not meta.get("owner"):
                    unowned.append((cid, meta))
                chunks.append({"id": cid, "doc_id": meta.get("document_id", cid.split(":")[0]),
                               "name": meta.get("name", "?"), "chunk": int(meta.get("chunk", 0)),
                               "chunks": int(meta.get("chunks", 0)), "added": meta.get("added", ""),
                               "text": text or "", "owner": meta.get("owner") or owner_key(DEFAULT_OWNER)})
            self._adopt(unowned)
            chunks.sort(key=lambda c: (c["added"], c["doc_id"], c["chunk"]))
            self._chunks = chunks
            self._by_id = {c["id"]: i for i, c in enumerate(chunks)}
            self._all_bm25 = None
            self._scopes = {}
            self._seen = count

    def _adopt(self, unowned: list[tuple[str, dict]]) -> None:
        """Migration: chunks stored before owners existed become DEFAULT_OWNER's, in Chroma itself (so the `where`
        filter of a dense query finds them)."""
        step = self._max_batch() if unowned else 0
        for start in range(0, len(unowned), step or 1):
            part = unowned[start:start + step]
            self.collection.update(ids=[cid for cid, _ in part],
                                   metadatas=[{**meta, "owner": owner_key(DEFAULT_OWNER)} for _, meta in part])

    @property
    def _bm25(self) -> "_Bm25":
        """BM25 over every chunk of every owner: for the benchmarks' raw lists only, never for a user's query."""
        with self._lock:
            self._refresh()
            if self._all_bm25 is None:
                self._all_bm25 = _Bm25([c["text"] for c in self._chunks])
            return self._all_bm25

    @staticmethod
    def _keys(owner: str) -> tuple[str, ...]:
        """What `owner` reads: their own documents and the shared library."""
        return (owner_key(owner), SHARED)

    def _scope(self, owner: str) -> tuple[list[dict], "_Bm25", dict[str, int]]:
        """(chunks, BM25 index, {chunk id: index in chunks}) of what `owner` reads, built from those chunks only."""
        keys = self._keys(owner)
        with self._lock:
            self._refresh()
            if keys not in self._scopes:
                chunks = [c for c in self._chunks if c["owner"] in keys]
                if len(chunks) == len(self._chunks) and self._all_bm25 is not None:
                    bm25 = self._all_bm25  # every chunk is in scope (one owner: the lab, the benchmarks)
                else:
                    bm25 = _Bm25([c["text"] for c in chunks])
                    if len(chunks) == len(self._chunks):
                        self._all_bm25 = bm25
                if len(self._scopes) >= _SCOPES_KEPT:
                    self._scopes.pop(next(iter(self._scopes)))
                self._scopes[keys] = (chunks, bm25, {c["id"]: i for i, c in enumerate(chunks)})
            return self._scopes[keys]

    @staticmethod
    def _where(keys) -> dict:
        return {"owner": keys[0]} if len(keys) == 1 else {"owner": {"$in": list(keys)}}

    def is_empty(self, owner: str = DEFAULT_OWNER) -> bool:
        """No document that `owner` reads (their own or shared)."""
        return not self.collection.get(where=self._where(self._keys(owner)), limit=1, include=[])["ids"]

    def list(self, owner: str = DEFAULT_OWNER) -> list[dict]:
        """The documents `owner` reads, oldest first: doc_id, name, chunks, added (ISO time, UTC), shared (bool:
        the shared library's)."""
        chunks, _, _ = self._scope(owner)
        docs: dict[str, dict] = {}
        for c in chunks:
            d = docs.setdefault(c["doc_id"], {"doc_id": c["doc_id"], "name": c["name"], "chunks": 0,
                                              "added": c["added"], "shared": c["owner"] == SHARED})
            d["chunks"] += 1
        return list(docs.values())

    def has(self, doc_id: str, owner: str = DEFAULT_OWNER, shared: bool = False) -> bool:
        """Whether `owner` (or, with shared=True, the shared library) holds document `doc_id`."""
        return bool(self.collection.get(where=self._doc_where(doc_id, owner, shared), limit=1, include=[])["ids"])

    @staticmethod
    def _doc_where(doc_id: str, owner: str | None, shared: bool) -> dict:
        return {"$and": [{"document_id": str(doc_id)}, {"owner": owner_key(owner, shared)}]}

    # -- writing -------------------------------------------------------------------------------------
    def add(self, path: str | Path, original_name: str | None = None,
            progress: Callable[[float, str], None] | None = None, owner: str = DEFAULT_OWNER,
            shared: bool = False) -> dict:
        """Ingest one file as `owner`'s (or, shared=True, into the shared library: the caller checks the role).
        `original_name` (e.g. the browser's file name) decides the type and the display name; it is never used as
        a path. Returns {"doc_id", "name", "chunks", "duplicate"}. IngestError on bad input, in which case nothing
        is stored."""
        raw_name = original_name or Path(path).name
        ingest.kind_of(raw_name)  # refuse unsupported types before reading anything
        data = ingest.read_upload(path, self.max_upload_mb)
        text = ingest.extract_text(data, raw_name)
        result = self.add_text(text, ingest.display_name(raw_name), progress=progress, owner=owner, shared=shared)
        if not result["duplicate"]:
            self._keep_copy(result["doc_id"], raw_name, data)
        return result

    def add_text(self, text: str, name: str, doc_id: str | None = None,
                 progress: Callable[[float, str], None] | None = None, owner: str = DEFAULT_OWNER,
                 shared: bool = False) -> dict:
        """Ingest already-extracted text under display `name` (content-and-owner hash id unless given)."""
        return self.add_texts([(text, name, doc_id)], progress=progress, owner=owner, shared=shared)[0]

    @staticmethod
    def doc_id_for(text: str, owner: str = DEFAULT_OWNER, shared: bool = False) -> str:
        """The id a text gets: its content hash for DEFAULT_OWNER (the ids from before owners), else the hash of the
        owner and the content, so the same file of two owners is two documents."""
        key = owner_key(owner, shared)
        return ingest.content_id(text) if key == owner_key(DEFAULT_OWNER) else ingest.content_id(key + "\n" + text)

    def add_texts(self, items: list[tuple], progress: Callable[[float, str], None] | None = None,
                  owner: str = DEFAULT_OWNER, shared: bool = False) -> list[dict]:
        """Bulk ingest of (text, name[, doc_id]) items as `owner`'s (or the shared library's): one embedding pass,
        one write. All or nothing. A given doc_id that another owner already uses is refused.

        Bounded work: one ingest per user at a time (a second one is refused in words while the first runs), at
        most `max_chunks` chunks per document (refused before any embedding), and the embedding runs outside the
        store's lock, so searches and other users' uploads go on meanwhile (the embedder takes turns batch by
        batch)."""
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        key = owner_key(owner, shared)
        docs = []
        for item in items:
            text, name = item[0], ingest.display_name(item[1])
            doc_id = (item[2] if len(item) > 2 else None) or self.doc_id_for(text, owner, shared)
            docs.append((text, name, doc_id))
        label = docs[0][1] if len(docs) == 1 else f"{len(docs)} documents"
        with self._one_ingest(owner or key, label):
            known, taken = self._known(key)
            clash = [doc_id for _, _, doc_id in docs if doc_id in taken and doc_id not in known]
            if clash:
                raise IngestError(f"document id {clash[0]} is already used; choose another id")
            results, nodes, texts, fresh = [], [], [], []
            added = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for text, name, doc_id in docs:
                if doc_id in known:
                    d = known[doc_id]
                    results.append({"doc_id": doc_id, "name": d["name"], "chunks": d["chunks"], "duplicate": True})
                    continue
                chunks = ingest.chunk_text(text, self.splitter)
                if not chunks:
                    raise IngestError(f"{name} contains no text to index")
                if self.max_chunks and len(chunks) > self.max_chunks:
                    raise IngestError(f"{name} makes {len(chunks):,} chunks; the limit is {self.max_chunks:,} per "
                                      "document (KAIZEN_MAX_DOC_CHUNKS): split it into smaller files. Nothing was "
                                      "stored.")
                known[doc_id] = {"name": name, "chunks": len(chunks)}
                results.append({"doc_id": doc_id, "name": name, "chunks": len(chunks), "duplicate": False})
                fresh.append(doc_id)
                for i, chunk in enumerate(chunks):
                    nodes.append(TextNode(
                        id_=f"{doc_id}:{i}", text=chunk,
                        metadata={"name": name, "chunk": i, "chunks": len(chunks), "added": added, "owner": key},
                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id)}))
                    texts.append(chunk)
            if not nodes:
                return results
            label = docs[0][1] if len(docs) == 1 else f"{len(fresh)} documents"
            for start in range(0, len(texts), 64):  # outside the lock: the long part
                for node, vec in zip(nodes[start:start + 64], self.embedder.embed(texts[start:start + 64])):
                    node.embedding = vec
                if progress:
                    progress(min(1.0, (start + 64) / len(texts)), f"embedding {label}")
            with self._lock:
                try:  # in batches: Chroma refuses more than its max batch size (5,461 locally) in one add
                    step = self.write_batch or self._max_batch()
                    for start in range(0, len(nodes), step):
                        self.store.add(nodes[start:start + step])
                except BaseException:
                    for doc_id in fresh:  # no half-indexed document
                        self.collection.delete(where={"$and": [{"document_id": doc_id}, {"owner": key}]})
                    raise
                finally:
                    self._seen = -1  # caches rebuilt lazily, on the next read
        return results

    def _known(self, key: str) -> tuple[dict[str, dict], set[str]]:
        """({doc_id: {"name", "chunks"}} of owner key `key`, the doc ids other owners use)."""
        with self._lock:
            self._refresh()
            known: dict[str, dict] = {}
            for c in self._chunks:
                if c["owner"] == key:
                    d = known.setdefault(c["doc_id"], {"name": c["name"], "chunks": 0})
                    d["chunks"] += 1
            return known, {c["doc_id"] for c in self._chunks if c["owner"] != key}

    @contextlib.contextmanager
    def _one_ingest(self, who: str, label: str):
        """One ingest at a time per user (`who`): a second one is refused while the first is embedding."""
        with self._ingest_guard:
            running = self._ingesting.get(who)
            if running is not None:
                raise IngestError(f"you already have an upload being indexed ({running}): wait for it to finish, "
                                  "then upload again. Nothing was stored.")
            self._ingesting[who] = label
        try:
            yield
        finally:
            with self._ingest_guard:
                self._ingesting.pop(who, None)

    def _max_batch(self) -> int:
        try:
            return max(1, int(self.collection._client.get_max_batch_size()))
        except Exception:  # an older or foreign client: a size every Chroma accepts
            return 1000

    def _keep_copy(self, doc_id: str, raw_name: str, data: bytes) -> None:
        """The original bytes under a generated, inert name (never the user's name, never .html/.svg)."""
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        target = self.uploads_dir / (doc_id + STORED_EXT.get(Path(raw_name).suffix.lower(), ".bin"))
        tmp = target.with_name(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)

    def stored_files(self, doc_id: str) -> list[Path]:
        if not re.fullmatch(r"[0-9a-f]{16}", doc_id or ""):
            return []
        return sorted(self.uploads_dir.glob(doc_id + ".*")) if self.uploads_dir.is_dir() else []

    def remove(self, doc_id: str, owner: str = DEFAULT_OWNER, shared: bool = False) -> bool:
        """Delete one of `owner`'s documents (or, shared=True, one of the shared library's: the caller checks the
        role): its chunks (Chroma and BM25) and its stored copy. False when `owner` has no such document, another
        owner's included."""
        with self._lock:
            if not self.has(doc_id, owner, shared):
                return False
            self.collection.delete(where=self._doc_where(doc_id, owner, shared))
            for f in self.stored_files(doc_id):
                f.unlink(missing_ok=True)
            self._seen = -1
        return True

    # -- reading -------------------------------------------------------------------------------------
    def _dense(self, qvec: list[float], k: int, owner: str | None = DEFAULT_OWNER) -> list[tuple[str, float]]:
        """Dense top k among what `owner` reads (a Chroma `where` on the owner; None: every owner, benchmarks)."""
        from llama_index.core.vector_stores.types import VectorStoreQuery

        if owner is None:
            n, where = min(k, self.collection.count()), None
        else:
            n, where = min(k, len(self._scope(owner)[0])), self._where(self._keys(owner))
        if n <= 0:
            return []
        res = self.store.query(VectorStoreQuery(query_embedding=qvec, similarity_top_k=n), where=where)
        return [(i, _cosine_from_chroma(s)) for i, s in zip(res.ids, res.similarities)]

    def _similarities(self, qvec: list[float], ids: list[str], owner: str | None = DEFAULT_OWNER) -> dict[str, float]:
        if not ids:
            return {}
        import numpy as np

        where = None if owner is None else self._where(self._keys(owner))
        got = self.collection.get(ids=ids, where=where, include=["embeddings"])
        if not got["ids"]:
            return {}
        cos = np.asarray(got["embeddings"], dtype=np.float32) @ np.asarray(qvec, dtype=np.float32)
        return dict(zip(got["ids"], cos.tolist()))

    def candidates(self, query: str, depth: int | None = None,
                   owner: str = DEFAULT_OWNER) -> tuple[list[str], list[list[float]]]:
        """The learned reranker's pool for `query` among what `owner` reads (the union of the dense and BM25 top
        `depth`) as chunk ids and feature rows; what `search` ranks, and what bench/train_reranker.py fits on."""
        chunks, bm25, by_id = self._scope(owner)
        depth = depth or self.hybrid.depth
        query = (query or "").strip()
        if not query or not by_id:
            return [], []
        dense, lexical, sims = self._both_lists(self.embedder.embed_query(query), query, depth, chunks, bm25, owner,
                                                cosines=True)
        return self._pool(query, dense, lexical, sims, bm25, by_id, depth)

    def _both_lists(self, qvec, query: str, depth: int, chunks: list[dict], bm25: "_Bm25", owner: str,
                    cosines: bool):
        """Dense and BM25 top `depth` among `owner`'s scope as (id, score) lists, and {id: cosine} — for every
        candidate of either list when `cosines`, else for the dense ones only."""
        dense = self._dense(qvec, depth, owner)
        lexical = [(chunks[i]["id"], s) for i, s in bm25.search(query, depth)]
        sims = dict(dense)
        if cosines:
            sims.update(self._similarities(qvec, [i for i, _ in lexical if i not in sims], owner))
        return dense, lexical, sims

    @staticmethod
    def _pool(query, dense, lexical, sims, bm25, by_id, depth):
        d_rank = {i: r for r, (i, _) in enumerate(dense, start=1)}
        b_rank = {i: r for r, (i, _) in enumerate(lexical, start=1)}
        ids = [i for i in dict.fromkeys([i for i, _ in dense] + [i for i, _ in lexical]) if i in by_id]
        rows = bm25.feature_rows(query, [(by_id[i], i, sims.get(i, 0.0), d_rank.get(i), b_rank.get(i))
                                         for i in ids], depth)
        return ids, rows

    def search(self, query: str, k: int = 4, mode: str = "hybrid", owner: str = DEFAULT_OWNER) -> list[Hit]:
        """Top-k chunks for `query` among what `owner` reads (their documents and the shared library). mode:
        "hybrid" (BM25 + dense, fused as `self.hybrid` says), "bm25" or "dense"."""
        if mode not in ("hybrid", "bm25", "dense"):
            raise ValueError(f"unknown search mode {mode!r}: use hybrid, bm25 or dense")
        owner_key(owner)  # no search as nobody
        query = (query or "").strip()
        if not query or k <= 0:
            return []
        chunks, bm25, by_id = self._scope(owner)
        if not chunks:
            return []
        cfg = self.hybrid
        depth = max(k, cfg.depth) if mode == "hybrid" else k
        if mode == "hybrid" and cfg.method not in ("learned", "convex", "rrf"):
            raise ValueError(f"unknown fusion method {cfg.method!r}: use learned, convex or rrf")
        qvec = self.embedder.embed_query(query)
        sims: dict[str, float] = {}
        if mode == "dense":
            ranked = self._dense(qvec, depth, owner)
            sims = dict(ranked)
        elif mode == "bm25":
            ranked = [(chunks[i]["id"], s) for i, s in bm25.search(query, depth)]
        else:
            dense, lexical, sims = self._both_lists(qvec, query, depth, chunks, bm25, owner,
                                                    cosines=cfg.method != "rrf")
            if cfg.method == "rrf":
                ranked = rrf_fuse([[i for i, _ in dense], [i for i, _ in lexical]],
                                  [cfg.dense_weight, cfg.bm25_weight], cfg.rrf_k)
            elif cfg.method == "convex":
                ranked = convex_fuse(sims, dict(lexical), cfg.bm25_share)
            else:
                ids, rows = self._pool(query, dense, lexical, sims, bm25, by_id, depth)
                probs = rerank.softmax(rerank.default_ranker().scores(rows))
                ranked = sorted(zip(ids, probs), key=lambda kv: -kv[1])
        ranked = [(i, s) for i, s in ranked if i in by_id][:k]
        sims.update(self._similarities(qvec, [i for i, _ in ranked if i not in sims], owner))
        hits = []
        for cid, score in ranked:
            c = chunks[by_id[cid]]
            hits.append(Hit(doc_id=c["doc_id"], file=c["name"], chunk=c["chunk"], score=float(score),
                            text=c["text"], similarity=sims.get(cid), shared=c["owner"] == SHARED))
        return hits
