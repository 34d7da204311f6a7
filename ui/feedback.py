"""The Feedback tab: counts over time and by template/model/adapter, thumbs ratio, latest edits, reasons, comments.

Call `build_feedback_tab(store, user_id_fn)` inside `with gr.Tab("Feedback"):` of a `gr.Blocks`; it builds the
components, refreshes them when the tab is selected and on its Refresh button, and returns a `FeedbackTab`
(to also fill it when the page opens: `demo.load(tab.refresh, None, tab.outputs)`). `user_id_fn(request: gr.Request) -> int | None` names the viewer:
an admin (or None, anonymous single-user mode) sees everyone's feedback, a user only their own.
"Export my feedback (JSONL)" writes the caller's own record (`feedback.export.write_user_export`: their
conversations, messages, ratings, edits and picks, never another user's) behind a Download button.
`frames(stats)` (pure) turns `Store.stats()` into the DataFrames shown.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
from gradio.context import get_render_context

from agent.files import last_part

EDIT_COLUMNS = ["created", "user", "message_id", "adapter", "original", "edited"]
REASON_COLUMNS = ["created", "user", "message_id", "adapter", "rating", "reasons", "comment", "answer"]
SERIES = ("answers", "thumbs up", "thumbs down", "taken back", "edits", "picks")


def daily_frame(daily: list[dict]) -> pd.DataFrame:
    """One row per (day, series) for every day from the day before the first event to the last, zeros filled in:
    each series is its own line, and a single day of data still draws (from 0 the day before). Days are ISO dates
    as text (a nominal axis, sorted as text: in date order), not timestamps: a time axis put hour ticks ("02 AM",
    "04 AM") between two days of counts."""
    if not daily:
        return pd.DataFrame(columns=["day", "series", "count"])
    counts = {(r["day"], r["series"]): int(r["count"]) for r in daily}
    days = pd.date_range(pd.Timestamp(min(r["day"] for r in daily)) - pd.Timedelta(days=1),
                         pd.Timestamp(max(r["day"] for r in daily)), freq="D")
    rows = [{"day": d.strftime("%Y-%m-%d"), "series": s, "count": counts.get((d.strftime("%Y-%m-%d"), s), 0)}
            for d in days for s in SERIES]
    return pd.DataFrame(rows, columns=["day", "series", "count"])


def shown_name(model) -> str | None:
    """A model as the tab names it: the last part of a path ("smollm2-135m-instruct"), never the server's folders."""
    if not model:
        return model
    return last_part(model)


def frames(stats: dict) -> dict[str, pd.DataFrame]:
    """Long-format DataFrames for the plots: per_day, by_template/by_model/by_adapter, ratio, edits, reasons.
    The by_* frames put each kind of count (answers, 👍, 👎, edits) on its own bar, split by template / model /
    adapter: bars of different quantities are never stacked on each other."""
    out = {"per_day": daily_frame(stats.get("daily", []))}
    for g in ("template", "model", "adapter"):
        rows = [{"kind": kind, g: shown_name(r[g]) if g == "model" else r[g], "count": int(r[col] or 0)}
                for kind, col in (("answers", "answers"), ("thumbs up", "up"), ("thumbs down", "down"),
                                  ("edits", "edits"))
                for r in stats[f"by_{g}"]]
        out[f"by_{g}"] = pd.DataFrame(rows, columns=["kind", g, "count"])
    ratio_rows = [{"adapter": "(all)", "thumbs_up_ratio": stats["thumbs_ratio"]}] + \
                 [{"adapter": r["adapter"], "thumbs_up_ratio": r["ratio"]} for r in stats["by_adapter"]]
    out["ratio"] = pd.DataFrame([r for r in ratio_rows if r["thumbs_up_ratio"] is not None],
                                columns=["adapter", "thumbs_up_ratio"])
    out["edits"] = pd.DataFrame([{c: ("" if e.get(c) is None else str(e[c])) for c in EDIT_COLUMNS}
                                 for e in stats["latest_edits"]], columns=EDIT_COLUMNS)
    out["reasons"] = pd.DataFrame([{"created": r["created"][:19].replace("T", " "), "user": r["user"],
                                    "message_id": str(r["message_id"]), "adapter": r["adapter"],
                                    "rating": {1: "👍 up", -1: "👎 down"}.get(r["value"], ""),
                                    "reasons": ", ".join(r["reasons"]), "comment": r["comment"],
                                    "answer": _clip(r["answer"], 120)}
                                   for r in stats.get("latest_reasons", [])], columns=REASON_COLUMNS)
    return out


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_markdown(stats: dict, scope: str) -> str:
    t = stats["totals"]
    r = stats["thumbs_ratio"]
    return (f"**{scope}** · {t['answers']} answers · {t['ratings']} ratings "
            f"({t['thumbs_up']} 👍 / {t['thumbs_down']} 👎, latest per answer) · {t['edits']} edits · "
            f"{t['choices']} picks · thumbs-up ratio {'–' if r is None else f'{r:.0%}'}")


@dataclass
class FeedbackTab:
    refresh: Callable  # (request: gr.Request) -> tuple of values for `outputs`
    outputs: list
    refresh_button: gr.Button
    export_button: gr.Button | None = None
    download: gr.DownloadButton | None = None


def build_feedback_tab(store, user_id_fn: Callable) -> FeedbackTab:
    """Build the Feedback view in the current Blocks context (no launching)."""
    parent = get_render_context()
    summary = gr.Markdown("Press **Refresh** to load the feedback statistics.")
    with gr.Row():
        refresh_button = gr.Button("Refresh", variant="secondary", size="sm")
        export_button = gr.Button("Export my feedback (JSONL)", variant="secondary", size="sm",
                                  elem_id="feedback-export")
        download = gr.DownloadButton("Download", visible=False, size="sm", variant="primary",
                                     elem_id="feedback-download")
    per_day = gr.LinePlot(x="day", y="count", color="series", title="Answers and feedback per day", x_title="day",
                          y_title="count")
    with gr.Row():
        ratio = gr.BarPlot(x="adapter", y="thumbs_up_ratio", title="Thumbs-up ratio (overall and by adapter)",
                           y_lim=[0, 1])
        by_adapter = gr.BarPlot(x="kind", y="count", color="adapter", title="By adapter")
    with gr.Row():
        by_template = gr.BarPlot(x="kind", y="count", color="template", title="By template")
        by_model = gr.BarPlot(x="kind", y="count", color="model", title="By model")
    reasons = gr.Dataframe(headers=REASON_COLUMNS, datatype="str", label="Latest reasons and comments",
                           interactive=False, wrap=True)
    edits = gr.Dataframe(headers=EDIT_COLUMNS, datatype="str", label="Latest edits", interactive=False, wrap=True)

    def refresh(request: gr.Request = None):
        user_id = user_id_fn(request)
        scope_user = None
        scope = "All users"
        if user_id is not None and store.user(user_id)["role"] != "admin":
            scope_user, scope = user_id, "Your feedback"
        stats = store.stats(scope_user)
        f = frames(stats)
        return (summary_markdown(stats, scope), f["per_day"], f["ratio"], f["by_adapter"], f["by_template"],
                f["by_model"], f["edits"], f["reasons"])


    def export(request: gr.Request = None):
        """The caller's own record (theirs only, admins included) as a JSONL file behind the Download button."""
        user_id = user_id_fn(request)
        if user_id is None:
            raise gr.Error("Log in first: the export holds your own feedback.", title="Refused")
        from feedback.export import write_user_export

        path, n = write_user_export(store, user_id, Path(tempfile.gettempdir()) / "kaizen-exports")
        # the button is the notice (a toast would cover it): the file, and how many records it holds
        return gr.update(value=str(path), visible=True, label=f"Download {path.name} ({n} records)")

    outputs = [summary, per_day, ratio, by_adapter, by_template, by_model, edits, reasons]
    refresh_button.click(refresh, None, outputs, api_visibility="private")
    export_button.click(export, None, download, api_visibility="private")
    if isinstance(parent, gr.Tab):
        parent.select(refresh, None, outputs, api_visibility="private")
    return FeedbackTab(refresh=refresh, outputs=outputs, refresh_button=refresh_button, export_button=export_button,
                       download=download)
