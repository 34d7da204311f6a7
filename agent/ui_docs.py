"""The Documents tab: upload (with progress), list, delete. Built inside the caller's `with gr.Tab(...)`.

The handlers are plain functions of the KnowledgeBase (`upload_files`, `table_rows`, `delete_doc`) so they are tested
without a browser. Uploaded files are read from Gradio's temp copy; their names are only used, sanitized, for display.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from agent.ingest import SUPPORTED, IngestError

COLUMNS = ["id", "name", "chunks", "added"]
FILE_TYPES = sorted(SUPPORTED)


def table_rows(kb) -> list[list]:
    return [[d["doc_id"], d["name"], d["chunks"], d["added"]] for d in kb.list()]


def choices(kb) -> list[tuple[str, str]]:
    return [(f"{d['name']} ({d['doc_id'][:8]})", d["doc_id"]) for d in kb.list()]


def upload_files(kb, paths: list[str], progress=None) -> str:
    """Ingest each file; one status line per file (refusals included). Never raises for bad files."""
    lines = []
    paths = [p for p in (paths or []) if p]
    for n, path in enumerate(paths):
        name = Path(path).name

        def step(frac, desc, n=n):
            if progress is not None:
                progress((n + frac) / len(paths), desc=desc)

        step(0.0, f"reading {name}")
        try:
            r = kb.add(path, original_name=name, progress=step)
        except (IngestError, OSError) as e:
            lines.append(f"- refused: {e}")
            continue
        if r["duplicate"]:
            lines.append(f"- `{r['name']}`: already in the store (same content), not added again")
        else:
            lines.append(f"- `{r['name']}`: added, {r['chunks']} chunks")
    if progress is not None and paths:
        progress(1.0, desc="done")
    return "\n".join(lines) or "No file selected."


def delete_doc(kb, doc_id: str | None) -> str:
    if not doc_id:
        return "Pick a document to delete."
    name = next((d["name"] for d in kb.list() if d["doc_id"] == doc_id), None)
    if name is None or not kb.remove(doc_id):
        return "That document is no longer in the store."
    return f"Deleted `{name}`."


def build_docs_tab(kb) -> dict:
    """Build the Documents view in the current Blocks context. Returns its components:
    {"upload": gr.File, "status": gr.Markdown, "table": gr.Dataframe, "pick": gr.Dropdown (doc id to delete),
     "delete": gr.Button, "refresh": gr.Button}. The list refreshes when the enclosing Tab is selected."""
    from gradio.context import get_render_context

    parent = get_render_context()
    gr.Markdown("Upload documents to ground answers in them (" + ", ".join(FILE_TYPES) + "). "
                "Answers that use them list their sources.")
    upload = gr.File(label="Upload documents", file_count="multiple", file_types=FILE_TYPES, type="filepath",
                     elem_id="docs-upload")
    status = gr.Markdown(elem_id="docs-status")
    table = gr.Dataframe(value=table_rows(kb), headers=COLUMNS, datatype=["str", "str", "number", "str"],
                         interactive=False, label="Documents", elem_id="docs-table")
    with gr.Row():
        pick = gr.Dropdown(choices=choices(kb), value=None, label="Document", elem_id="docs-pick", scale=3)
        delete = gr.Button("Delete", variant="stop", elem_id="docs-delete", scale=1)
        refresh = gr.Button("Refresh", elem_id="docs-refresh", scale=1)

    def on_upload(files, progress=gr.Progress()):
        paths = [f if isinstance(f, str) else getattr(f, "name", None) for f in (files or [])]
        msg = upload_files(kb, paths, progress)
        return msg, table_rows(kb), gr.update(choices=choices(kb), value=None), None

    def on_delete(doc_id):
        msg = delete_doc(kb, doc_id)
        return msg, table_rows(kb), gr.update(choices=choices(kb), value=None)

    def on_refresh():
        return table_rows(kb), gr.update(choices=choices(kb))

    def on_select(evt: gr.SelectData):
        row = evt.row_value if evt is not None else None
        return gr.update(value=row[0]) if row else gr.update()

    upload.upload(on_upload, upload, [status, table, pick, upload], api_visibility="private")
    delete.click(on_delete, pick, [status, table, pick], api_visibility="private")
    refresh.click(on_refresh, None, [table, pick], api_visibility="private")
    table.select(on_select, None, pick, api_visibility="private")
    if isinstance(parent, gr.Tab):
        parent.select(on_refresh, None, [table, pick], api_visibility="private")
    return {"upload": upload, "status": status, "table": table, "pick": pick, "delete": delete, "refresh": refresh}
