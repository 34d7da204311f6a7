"""The Documents tab: upload (with progress), list, delete. Built inside the caller's `with gr.Tab(...)`.

An upload is indexed in a background job (agent/ingest_jobs.py), one a user at a time: the upload request shows its
progress, and a reload or a closed tab loses nothing — opening the Documents tab again shows the job's progress
and then its outcome; the chat answers meanwhile.

The handlers are plain functions of the KnowledgeBase (`upload_files`, `table_rows`, `delete_doc`) so they are tested
without a browser. Uploaded files are read from Gradio's temp copy, which is deleted once ingested; their names are
only used, sanitized, for display.

Each user sees, searches and deletes only their own documents, plus the shared library (read by everyone). Only an
admin adds to the shared library ("Add to the shared library" is shown to admins) or deletes from it; the check is
on the server (ui/authz.py), whatever the page shows.
"""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from agent.ingest import SUPPORTED, IngestError
from agent.ingest_jobs import BusyError, IngestJobs, status_text
from agent.retrieval import DEFAULT_OWNER

COLUMNS = ["id", "name", "chunks", "added", "library"]
FILE_TYPES = sorted(SUPPORTED)


def table_rows(kb, owner: str = DEFAULT_OWNER) -> list[list]:
    return [[d["doc_id"], d["name"], d["chunks"], d["added"], "shared" if d.get("shared") else "yours"]
            for d in kb.list(owner)]


def choices(kb, owner: str = DEFAULT_OWNER) -> list[tuple[str, str]]:
    return [(f"{d['name']} ({d['doc_id'][:8]}{', shared' if d.get('shared') else ''})", d["doc_id"])
            for d in kb.list(owner)]


def upload_files(kb, paths: list[str], progress=None, owner: str = DEFAULT_OWNER, shared: bool = False) -> str:
    """Ingest each file as `owner`'s (or into the shared library: the caller checks the role); one status line per
    file (refusals included). Never raises for bad files."""
    lines = []
    paths = [p for p in (paths or []) if p]
    for n, path in enumerate(paths):
        name = Path(path).name

        def step(frac, desc, n=n):
            if progress is not None:
                progress((n + frac) / len(paths), desc=desc)

        step(0.0, f"reading {name}")
        try:
            r = kb.add(path, original_name=name, progress=step, owner=owner, shared=shared)
        except (IngestError, OSError) as e:
            lines.append(f"- refused: {e}")
            continue
        where = " to the shared library" if shared else ""
        if r["duplicate"]:
            lines.append(f"- `{r['name']}`: already in the store (same content), not added again")
        else:
            lines.append(f"- `{r['name']}`: added{where}, {r['chunks']} chunks")
    if progress is not None and paths:
        progress(1.0, desc="done")
    return "\n".join(lines) or "No file selected."


def delete_doc(kb, doc_id: str | None, owner: str = DEFAULT_OWNER, admin: bool = False) -> str:
    """Delete one of `owner`'s documents, or (admins only) one of the shared library's. Another user's document is
    'not in the store' for them: no code path reaches it."""
    if not doc_id:
        return "Pick a document to delete."
    doc = next((d for d in kb.list(owner) if d["doc_id"] == doc_id), None)
    if doc is None:
        return "That document is no longer in the store."
    if doc.get("shared") and not admin:
        return "Only an admin can delete a document of the shared library."
    if not kb.remove(doc_id, owner, shared=bool(doc.get("shared"))):
        return "That document is no longer in the store."
    return f"Deleted `{doc['name']}`."


def discard_upload(path: str | None) -> None:
    """Delete Gradio's temp copy of an upload (and its folder, when empty) once it is ingested: the original stays
    only in the store's inert copy. Paths outside Gradio's upload folder are never touched."""
    if not path:
        return
    root = Path(gr.utils.get_upload_folder()).resolve()
    p = Path(path).resolve()
    if root not in p.parents or not p.is_file():
        return
    p.unlink(missing_ok=True)
    try:
        if p.parent != root:
            os.rmdir(p.parent)
    except OSError:  # not empty: another file of the same upload
        pass


def upload_label(paths: list[str]) -> str:
    names = [Path(p).name for p in paths]
    return names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"


def build_docs_tab(kb, authz=None, jobs: IngestJobs | None = None) -> dict:
    """Build the Documents view in the current Blocks context. Returns its components:
    {"upload": gr.File, "shared": gr.Checkbox (admins: into the shared library), "status": gr.Markdown,
     "table": gr.Dataframe, "pick": gr.Dropdown (doc id to delete), "delete": gr.Button, "refresh": gr.Button,
     "timer": gr.Timer (ticks while the user's upload job runs)}.
    The list refreshes when the enclosing Tab is selected. `authz`: ui.authz.Authz (default: single-user);
    `jobs`: the app's upload jobs (default: this tab's own)."""
    from gradio.context import get_render_context

    from ui.authz import Authz

    authz = authz or Authz(None)
    jobs = jobs or IngestJobs()
    parent = get_render_context()
    gr.Markdown("Upload documents to ground answers in them (" + ", ".join(FILE_TYPES) + "). "
                "Answers that use them list their sources. Your documents are yours alone (feedback on answers "
                "from them never trains the shared adapter); the shared library is read by everyone. A big file is "
                "indexed in the background: you can chat meanwhile.")
    upload = gr.File(label="Upload documents", file_count="multiple", file_types=FILE_TYPES, type="filepath",
                     elem_id="docs-upload")
    shared = gr.Checkbox(False, label="Add to the shared library (everyone reads it)", visible=False,
                         elem_id="docs-shared")
    status = gr.Markdown(elem_id="docs-status")
    table = gr.Dataframe(value=[], headers=COLUMNS, datatype=["str", "str", "number", "str", "str"],
                         interactive=False, label="Documents", elem_id="docs-table")
    with gr.Row():
        pick = gr.Dropdown(choices=[], value=None, label="Document", elem_id="docs-pick", scale=3)
        delete = gr.Button("Delete", variant="stop", elem_id="docs-delete", scale=1)
        refresh = gr.Button("Refresh", elem_id="docs-refresh", scale=1)
    timer = gr.Timer(1.0, active=False)

    def listing(owner):
        return table_rows(kb, owner), gr.update(choices=choices(kb, owner), value=None)

    def on_upload(files, to_shared, request: gr.Request, progress=gr.Progress()):
        owner = authz.require_user(request)
        paths = [p for p in (f if isinstance(f, str) else getattr(f, "name", None) for f in (files or [])) if p]

        def work(step):  # in the job's thread: it goes on whatever happens to this request
            try:
                return upload_files(kb, paths, step, owner=owner, shared=bool(to_shared))
            finally:
                for p in paths:
                    discard_upload(p)

        try:
            if to_shared:
                authz.require_admin(request, "add to the shared library")
            if not paths:
                return ("No file selected.", *listing(owner), None)
            job = jobs.start(owner, upload_label(paths), work)
        except BusyError as e:
            for p in paths:
                discard_upload(p)
            return (f"- refused: {e}", *listing(owner), None)
        except BaseException:
            for p in paths:
                discard_upload(p)
            raise
        while not job.wait(0.5):  # follow the job; a reload leaves it running (the tab's timer shows it then)
            progress(job.fraction, desc=job.desc)
        return (job.message, *listing(owner), None)

    def on_delete(doc_id, request: gr.Request):
        owner = authz.require_user(request)
        msg = delete_doc(kb, doc_id, owner, admin=authz.is_admin(request))
        return (msg, *listing(owner))

    def on_refresh(request: gr.Request):
        owner = authz.require_user(request)
        return table_rows(kb, owner), gr.update(choices=choices(kb, owner)), gr.update(
            visible=authz.is_admin(request))

    def on_job(request: gr.Request):  # the caller's upload job, if one runs: its progress, then its outcome
        owner = authz.require_user(request)
        job = jobs.status(owner)
        if job is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
        if job["running"]:
            return status_text(job), gr.skip(), gr.skip(), gr.Timer(active=True)
        return (status_text(job), *listing(owner), gr.Timer(active=False))

    def on_select(evt: gr.SelectData):
        row = evt.row_value if evt is not None else None
        return gr.update(value=row[0]) if row else gr.update()

    # Several users' uploads go on at once (each user has one at a time: KnowledgeBase.add_texts), so one big file
    # does not hold the others back; the embedder serves them batch by batch.
    upload.upload(on_upload, [upload, shared], [status, table, pick, upload], api_visibility="private",
                  concurrency_id="ingest", concurrency_limit=4)
    delete.click(on_delete, pick, [status, table, pick], api_visibility="private")
    refresh.click(on_refresh, None, [table, pick, shared], api_visibility="private")
    table.select(on_select, None, pick, api_visibility="private")
    timer.tick(on_job, None, [status, table, pick, timer], api_visibility="private", queue=False)
    if isinstance(parent, gr.Tab):
        parent.select(on_refresh, None, [table, pick, shared], api_visibility="private").then(
            on_job, None, [status, table, pick, timer], api_visibility="private")
    return {"upload": upload, "shared": shared, "status": status, "table": table, "pick": pick, "delete": delete,
            "refresh": refresh, "timer": timer}
