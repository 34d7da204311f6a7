"""The Lab tab: pick a task and techniques, run the techniques lab, read the table, verdict and plots.

Call `build_lab_tab(settings)` inside `with gr.Tab("Lab"):` of a `gr.Blocks`. A run is `kaizen lab` in a child
process (training must not stall the chat, and Stop can end it at once); its progress lines stream into the tab and
its report folder lands in `<data_dir>/lab/`. One run at a time per app. Earlier reports can be reopened.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.run import TECHNIQUES
from lab.report import LABELS, table_rows
from lab.tasks import TASKS
from agent.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TASK_LABELS = {"squad": "Document QA (SQuAD)", "style": "House style from edits", "oasst": "Human preference (oasst)"}
PROGRESS_RE = re.compile(r"^\[\s*([0-9.]+)%\]\s*(.*)$")
_run_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------- pure helpers
def lab_root(settings: Settings) -> Path:
    return Path(settings.data_dir) / "lab"


def lab_command(task: str, techniques: list[str], steps: int, limit: int, out: Path) -> list[str]:
    if task not in TASKS:
        raise ValueError(f"choose a task: {', '.join(TASKS)}")
    if not techniques:
        raise ValueError("choose at least one technique")
    return [sys.executable, "-m", "cli.main", "lab", "--task", task, "--techniques", ",".join(techniques),
            "--budget-steps", str(int(steps)), "--limit", str(int(limit)), "--out", str(out)]


def lab_env(settings: Settings) -> dict:
    """The child sees the app's settings (which may not come from the environment)."""
    from adapters.train import settings_env

    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    env.pop("GRADIO_SERVER_PORT", None)
    env.pop("GRADIO_SERVER_NAME", None)
    return env


def parse_progress(line: str) -> tuple[float, str] | None:
    m = PROGRESS_RE.match(line.strip())
    return (float(m.group(1)) / 100, m.group(2)) if m else None


def report_view(result: dict) -> tuple[str, list[list[str]], list[str], list[tuple[str, str]]]:
    """(verdict markdown, table rows, table header, [(png path, caption)]) of a report.json dict."""
    header, rows = table_rows(result)
    task = result.get("task", {})
    b = result.get("budget", {})
    md = [f"### {task.get('title', '')} — {task.get('items')} items, {result.get('device')}",
          f"Budget: {b.get('steps')} steps × batch {b.get('batch_size')}, {b.get('examples')} examples, "
          f"max length {b.get('max_length')}.", ""]
    md += [f"- {line}" for line in result.get("verdict") or []]
    folder = Path(result.get("files", {}).get("report.json", "")).parent if result.get("files") else None
    images = []
    if folder:
        for name, caption in (("quality.png", "Quality"), ("costs.png", "Costs"), ("tradeoff.png", "Quality vs cost")):
            if (folder / name).exists():
                images.append((str(folder / name), caption))
    return "\n".join(md), rows, header, images


def load_report(folder: str | Path) -> dict:
    path = Path(folder) / "report.json"
    if not path.exists():
        raise FileNotFoundError(f"no report.json in {folder}")
    result = json.loads(path.read_text(encoding="utf-8"))
    result["files"] = {n: str(Path(folder) / n) for n in ("report.md", "report.json", "quality.png", "costs.png",
                                                          "tradeoff.png")}
    return result


def past_reports(settings: Settings) -> list[str]:
    """Report folders under <data_dir>/lab, newest first."""
    root = lab_root(settings)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob("*/report.json")]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


# ---------------------------------------------------------------------------------------------- the tab
@dataclass
class LabTab:
    run_button: object
    on_run: Callable  # generator (task, techniques, steps, limit) -> (status, verdict, table, plots, files, previous)
    on_stop: Callable
    on_open: Callable  # (folder) -> (status, verdict, table, plots, files)


def build_lab_tab(settings: Settings, authz=None) -> LabTab:
    """Build the Lab view in the current Blocks context (no launching); returns its handlers for wiring/tests.
    Every handler runs only for an admin (`authz`, a ui.authz.Authz; default from `settings`), checked on
    the server; an earlier report is opened only from under <data_dir>/lab."""
    import gradio as gr

    from ui.authz import Authz

    authz = authz or Authz.from_settings(settings)

    gr.Markdown("Which technique should you use? Run the same evaluation through the base model, prompt "
                "engineering, RAG, SFT / DPO / KTO LoRA and a full fine-tune, with equal training budgets. "
                "Runs take minutes on CPU; the chat stays available.")
    with gr.Row():
        task = gr.Dropdown([(TASK_LABELS[t], t) for t in TASKS], value="squad", label="Evaluation task",
                           elem_id="lab-task")
        techniques = gr.CheckboxGroup([(LABELS[t], t) for t in TECHNIQUES], value=list(TECHNIQUES),
                                      label="Techniques", elem_id="lab-techniques")
    with gr.Row():
        steps = gr.Number(20, label="Training steps (each trained technique)", precision=0, minimum=1,
                          maximum=5000, elem_id="lab-steps")
        limit = gr.Number(20, label="Evaluation items", precision=0, minimum=1, maximum=1000, elem_id="lab-limit")
        run = gr.Button("Run the lab", variant="primary", elem_id="lab-run")
        stop = gr.Button("Stop", variant="stop", elem_id="lab-stop")
    status = gr.Markdown("", elem_id="lab-status")
    verdict = gr.Markdown("", elem_id="lab-verdict")
    table = gr.Dataframe(label="Results", interactive=False, wrap=True, elem_id="lab-table")
    gallery = gr.Gallery(label="Plots", columns=3, height="auto", elem_id="lab-plots")
    files = gr.File(label="Report files (Markdown, JSON, PNG)", file_count="multiple", elem_id="lab-files")
    with gr.Row():
        # login mode: no report paths in the page config every logged-in user reads; filled on load for admins
        previous = gr.Dropdown([] if authz.login_mode else past_reports(settings), label="Earlier reports",
                               elem_id="lab-previous", scale=4)
        reopen = gr.Button("Open", size="sm", scale=1)
    procs: dict[str, subprocess.Popen] = {}

    def show(result: dict):
        md, rows, header, images = report_view(result)
        return md, gr.update(value=rows, headers=header), images, [p for p in result["files"].values()
                                                                   if Path(p).exists()]

    def on_run(task_name, chosen, n_steps, n_limit, request: gr.Request = None):
        key = getattr(request, "session_hash", None) or "default"
        if not _run_lock.acquire(blocking=False):
            yield "A lab run is already in progress; wait for it to finish.", gr.update(), gr.update(), \
                gr.update(), gr.update(), gr.update()
            return
        try:
            out = lab_root(settings) / f"{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"
            try:
                cmd = lab_command(task_name, list(chosen or []), int(n_steps or 1), int(n_limit or 1), out)
            except (ValueError, TypeError) as e:
                yield f"**Error:** {e}", gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
                return
            out.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(cmd, cwd=ROOT, env=lab_env(settings), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, bufsize=1)
            procs[key] = proc
            tail: list[str] = []
            for line in proc.stderr:
                tail = (tail + [line.rstrip()])[-20:]
                got = parse_progress(line)
                if got:
                    yield (f"Running: {100 * got[0]:.0f}% — {got[1]}", gr.update(), gr.update(), gr.update(),
                           gr.update(), gr.update())
            proc.wait()
            procs.pop(key, None)
            if not (out / "report.json").exists():
                why = "stopped" if proc.returncode in (-15, -9) else "failed:\n\n```\n" + "\n".join(tail) + "\n```"
                yield f"The lab run {why}", gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
                return
            md, tbl, imgs, fl = show(load_report(out))
            note = "Done." if proc.returncode == 0 else "Done, with failed techniques (see the table)."
            yield note, md, tbl, imgs, fl, gr.update(choices=past_reports(settings), value=str(out))
        finally:
            _run_lock.release()

    def on_stop(request: gr.Request = None):
        proc = procs.get(getattr(request, "session_hash", None) or "default")
        if proc and proc.poll() is None:
            proc.terminate()
            return "Stopping…"
        return "Nothing is running."

    def on_open(folder):
        if not folder:
            return "Choose a report.", gr.update(), gr.update(), gr.update(), gr.update()
        root = lab_root(settings).resolve()
        if root not in Path(folder).resolve().parents:
            return "**Error:** not a report of this app's lab", gr.update(), gr.update(), gr.update(), gr.update()
        try:
            return ("", *show(load_report(folder)))
        except (FileNotFoundError, ValueError) as e:
            return f"**Error:** {e}", gr.update(), gr.update(), gr.update(), gr.update()

    on_run = authz.admin_only(on_run, "run the lab")
    on_stop = authz.admin_only(on_stop, "stop the lab")
    on_open = authz.admin_only(on_open, "open a lab report")
    if authz.login_mode:
        from gradio.context import Context

        Context.root_block.load(authz.for_admins_quietly(lambda: gr.update(choices=past_reports(settings)), 1,
                                                         "fill the lab reports"), None, previous,
                                api_visibility="private")
    run.click(on_run, [task, techniques, steps, limit], [status, verdict, table, gallery, files, previous],
              api_visibility="private")
    stop.click(on_stop, None, status, api_visibility="private")
    reopen.click(on_open, previous, [status, verdict, table, gallery, files], api_visibility="private")
    return LabTab(run, on_run, on_stop, on_open)
