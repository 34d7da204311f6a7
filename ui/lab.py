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
from lab.report import LABELS, costs_from, estimate_text, partial_note, table_rows
from lab.tasks import TASK_METRICS, TASKS
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
    if partial_note(result):
        md += [partial_note(result), ""]
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
    """Report folder names under <data_dir>/lab, newest first (names, not paths: the page shows no server folder)."""
    root = lab_root(settings)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob("*/report.json")]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def report_folder(settings: Settings, name: str) -> Path:
    """The report folder called `name` under <data_dir>/lab; ValueError for anything else (a path, '..')."""
    name = str(name or "")
    root = lab_root(settings).resolve()
    folder = (root / name).resolve()
    if name != Path(name).name or folder.parent != root or not (folder / "report.json").is_file():
        raise ValueError("not a report of this app's lab")
    return folder


def empty_table(task: str) -> dict:
    """The results table before a run: the task's real column names, no rows."""
    header, _ = table_rows({"task": {"metrics": list(TASK_METRICS.get(task, ()))}})
    return {"headers": header, "data": []}


def run_estimate(settings: Settings, task: str, techniques, steps, limit) -> str:
    """The expected time of a run, from the latest complete report of `task` here when there is one."""
    past = None
    for name in past_reports(settings):
        try:
            result = json.loads((lab_root(settings) / name / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if result.get("task", {}).get("name") == task:
            past = costs_from(result)
            break
    try:
        return estimate_text(list(techniques or []), int(steps or 1), int(limit or 1), past)
    except (TypeError, ValueError):
        return ""


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
    estimate = gr.Markdown(run_estimate(settings, "squad", list(TECHNIQUES), 20, 20) if not authz.login_mode else "",
                           elem_id="lab-estimate")
    status = gr.Markdown("", elem_id="lab-status")
    verdict = gr.Markdown("", elem_id="lab-verdict")
    table = gr.Dataframe(value=empty_table("squad"), label="Results", interactive=False, wrap=True,
                         elem_id="lab-table")
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
                                    stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
            from agent.priority import background

            background(proc.pid, settings.background_nice)  # the chat goes first while the lab trains
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
            result = load_report(out)
            md, tbl, imgs, fl = show(result)
            if not result.get("complete", True):
                note = (f"Stopped after {len(result['rows'])} of {len(result.get('techniques') or [])} techniques; "
                        "their results are kept below.")
            elif proc.returncode == 0:
                note = "Done."
            else:
                note = "Done, with failed techniques (see the table)."
            yield note, md, tbl, imgs, fl, gr.update(choices=past_reports(settings), value=out.name)
        finally:
            _run_lock.release()

    def on_stop(request: gr.Request = None):
        proc = procs.get(getattr(request, "session_hash", None) or "default")
        if proc and proc.poll() is None:
            proc.terminate()
            return "Stopping…"
        return "Nothing is running."

    def on_open(name):
        if not name:
            return "Choose a report.", gr.update(), gr.update(), gr.update(), gr.update()
        try:
            return ("", *show(load_report(report_folder(settings, name))))
        except (FileNotFoundError, ValueError) as e:
            return f"**Error:** {e}", gr.update(), gr.update(), gr.update(), gr.update()

    def on_choice(task_name, chosen, n_steps, n_limit):  # before a run: how long it should take, the real columns
        return run_estimate(settings, task_name, chosen, n_steps, n_limit), gr.update(value=empty_table(task_name))

    on_run = authz.admin_only(on_run, "run the lab")
    on_stop = authz.admin_only(on_stop, "stop the lab")
    on_open = authz.admin_only(on_open, "open a lab report")
    on_choice = authz.admin_only(on_choice, "estimate a lab run")
    if authz.login_mode:
        from gradio.context import Context

        Context.root_block.load(authz.for_admins_quietly(lambda: gr.update(choices=past_reports(settings)), 1,
                                                         "fill the lab reports"), None, previous,
                                api_visibility="private")
    run.click(on_run, [task, techniques, steps, limit], [status, verdict, table, gallery, files, previous],
              api_visibility="private")
    for control in (task, techniques, steps, limit):
        control.change(on_choice, [task, techniques, steps, limit], [estimate, table], api_visibility="private")
    stop.click(on_stop, None, status, api_visibility="private")
    reopen.click(on_open, previous, [status, verdict, table, gallery, files], api_visibility="private")
    return LabTab(run, on_run, on_stop, on_open)
