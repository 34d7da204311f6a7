"""`kaizen docs` — manage the document store from the command line.

    kaizen docs add PATH...        ingest files (folders: their supported files, recursively)
    kaizen docs list [--json]      the documents
    kaizen docs rm ID...           delete documents (a unique id prefix is enough)
    kaizen docs search QUERY       what retrieval returns for a query (debugging aid)

Each takes --owner NAME (whose documents: default "local", the single local user) and add / rm take --shared
(the shared library every user reads; the command line is the operator's, so it may write there).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from agent.ingest import SUPPORTED, IngestError
from agent.settings import Settings


def open_kb():
    from agent.retrieval import KnowledgeBase

    return KnowledgeBase.from_settings(Settings.from_env())


def expand(paths: list[str]) -> list[Path]:
    """Files as given; folders replaced by their supported files (sorted, recursive)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED)
        else:
            out.append(p)
    return out


def resolve_id(docs: list[dict], wanted: str) -> str:
    """The full id for `wanted` (an id or a unique prefix of one); ValueError otherwise."""
    exact = [d["doc_id"] for d in docs if d["doc_id"] == wanted]
    if exact:
        return exact[0]
    matches = [d["doc_id"] for d in docs if wanted and d["doc_id"].startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(f"no document with id {wanted!r} (see `kaizen docs list`)")
    raise ValueError(f"{wanted!r} matches {len(matches)} documents; give more of the id")


def _cmd_add(args) -> int:
    kb = open_kb()
    files = expand(args.paths)
    if not files:
        print("kaizen docs add: no supported files found", file=sys.stderr)
        return 1
    failed = 0
    results = []
    for f in files:
        try:
            r = kb.add(f, owner=args.owner, shared=args.shared)
        except (IngestError, OSError) as e:
            failed += 1
            print(f"refused {f}: {e}", file=sys.stderr)
            continue
        results.append(r)
        if not args.json:
            what = "already present" if r["duplicate"] else f"added ({r['chunks']} chunks)"
            print(f"{r['doc_id']}  {r['name']}  {what}")
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    return 1 if failed else 0


def _cmd_list(args) -> int:
    docs = open_kb().list(args.owner)
    if args.json:
        print(json.dumps(docs, indent=2, ensure_ascii=False))
    elif not docs:
        print("no documents (add some with `kaizen docs add PATH`)")
    else:
        width = max(len(d["name"]) for d in docs)
        print(f"{'ID':16}  {'NAME':{width}}  CHUNKS  ADDED")
        for d in docs:
            print(f"{d['doc_id']:16}  {d['name']:{width}}  {d['chunks']:6}  {d['added']}")
    return 0


def _cmd_rm(args) -> int:
    kb = open_kb()
    docs = [d for d in kb.list(args.owner) if bool(d.get("shared")) == args.shared]
    ids = [resolve_id(docs, wanted) for wanted in args.ids]  # all checked before anything is deleted
    for doc_id in ids:
        name = next(d["name"] for d in docs if d["doc_id"] == doc_id)
        if kb.remove(doc_id, args.owner, shared=args.shared):
            print(f"removed {doc_id}  {name}")
    return 0


def _cmd_search(args) -> int:
    from agent.routing import decide

    kb = open_kb()
    hits = kb.search(args.query, k=args.k, mode=args.mode, owner=args.owner)
    if args.json:
        print(json.dumps([vars(h) for h in hits], indent=2, ensure_ascii=False))
        return 0
    print(f"route to documents (auto): {decide(args.query, hits, 'auto')}")
    for i, h in enumerate(hits, 1):
        sim = "-" if h.similarity is None else f"{h.similarity:.3f}"
        snippet = " ".join(h.text.split())[:100]
        print(f"[{i}] {h.file} #{h.chunk}  score {h.score:.4f}  cosine {sim}\n    {snippet}")
    return 0


def register(sub) -> None:
    """Add the `docs` group to the root `kaizen` sub-parsers."""
    p = sub.add_parser("docs", help="the document store for answers grounded in your files")
    dsub = p.add_subparsers(dest="docs_command", required=True)
    a = dsub.add_parser("add", help=f"ingest files or folders ({', '.join(sorted(SUPPORTED))})")
    a.add_argument("paths", nargs="+", metavar="PATH")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_cmd_add)
    ls = dsub.add_parser("list", help="list the documents")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)
    rm = dsub.add_parser("rm", help="delete documents by id (or unique id prefix)")
    rm.add_argument("ids", nargs="+", metavar="ID")
    rm.set_defaults(func=_cmd_rm)
    s = dsub.add_parser("search", help="show what retrieval returns for a query")
    s.add_argument("query")
    s.add_argument("-k", type=int, default=4)
    s.add_argument("--mode", choices=["hybrid", "bm25", "dense"], default="hybrid")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_search)
    from agent.retrieval import DEFAULT_OWNER

    for sp in (a, ls, rm, s):
        sp.add_argument("--owner", default=DEFAULT_OWNER, help=f"whose documents (default {DEFAULT_OWNER!r})")
    for sp in (a, rm):
        sp.add_argument("--shared", action="store_true", help="the shared library that every user reads")
