"""The Adapters tab: versions, metrics, loss curves, train now / promote / roll back / pin / A/B test.

Call inside the app's Blocks:

    with gr.Tab("Adapters"):
        parts = build_adapters_tab(registry, scheduler, on_change)

- `registry`: `adapters.registry.Registry`; `authz`: `feedback.authz.Authz` (default: from the registry's settings):
  every handler of the tab (they read or change adapters and start training) runs only for an admin, checked on
  the server whatever the UI shows; the status timer starts inactive unless `timer_active`, the app turns it on
  for admins; `scheduler`: `adapters.scheduler.Scheduler` or None (then "Train now"
  says so); `on_change()`: called with no arguments after any change of what should be served (promote,
  roll back, pin, unpin, a promotion by a run started here); the app hot-swaps there, e.g. with
  `adapters.registry.sync_model(registry, chat_model)`. Its return value is ignored.
- Returns a dict of components: "status" (Markdown), "serving" (Textbox holding the served version or "base": chain
  `parts["serving"].change(...)` to update other components), "table" (Dataframe), "version" (Dropdown),
  "details" (JSON), "decision" (Markdown: the gate's decision and reasons in words), "compare" (Dataframe: held-out
  prompts with the active and this version's answers), "loss_plot" and "reward_plot" (LinePlot), "method" (Dropdown), buttons "train", "refresh",
  "promote", "rollback", "pin", "pin_base", "unpin", "ab_start", "ab_stop" (with the "ab_share" Slider), and "timer" (gr.Timer refreshing the status every 5 s).
`versions_frame(rows)` and `curves_frame(folder)` (pure-ish: they read files, no Gradio) build the DataFrames.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import gradio as gr
import pandas as pd

from adapters import ab
from adapters.registry import RegistryError
from adapters.review import decision_lines, side_by_side

COLUMNS = ["served", "version", "state", "method", "rows", "final loss", "pref acc", "similarity", "gate", "created"]
CURVE_KEYS = {"loss": "loss", "rewards/margins": "reward margin", "rewards/accuracies": "reward accuracy"}


def _num(x, digits=3):
    return round(x, digits) if isinstance(x, (int, float)) else None


def versions_frame(rows: list[dict]) -> pd.DataFrame:
    """The versions table (newest first) from `Registry.list()`."""
    out = []
    for r in reversed(rows):
        m, ev = r.get("metrics") or {}, ((r.get("eval") or {}).get("candidate") or {})
        gate = (r.get("gate") or {}).get("promote")
        out.append({"served": "●" if r.get("serving") else ("📌" if r.get("pinned") else ""),
                    "version": r.get("version"), "state": r.get("state"), "method": r.get("method"),
                    "rows": m.get("rows"), "final loss": _num(m.get("final_loss")),
                    "pref acc": _num((ev.get("pref") or {}).get("accuracy"), 2),
                    "similarity": _num((ev.get("similarity") or {}).get("rouge_l"), 2),
                    "gate": "" if gate is None else ("passed" if gate else "refused"),
                    "created": r.get("created", "")})
    return pd.DataFrame(out, columns=COLUMNS)


def curves_frame(folder: str | Path | None, keys: tuple[str, ...] = ("loss",)) -> pd.DataFrame:
    """Long-format (step, value, metric) rows from a version's metrics.jsonl."""
    rows = []
    if folder:
        path = Path(folder) / "metrics.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                for k in keys:
                    if k in d and "step" in d:
                        rows.append({"step": d["step"], "value": d[k], "metric": CURVE_KEYS.get(k, k)})
    return pd.DataFrame(rows, columns=["step", "value", "metric"])


def compare_frame(meta: dict | None) -> pd.DataFrame:
    """Prompt | active | candidate rows of a version's evaluation (empty without one)."""
    return pd.DataFrame(side_by_side(meta) if meta else [], columns=["prompt", "active", "candidate"])


def status_markdown(registry, scheduler) -> str:
    text = (f"**Serving:** {registry.serving() or 'base model'} · **active:** {registry.active() or 'base'} · "
            f"**pinned:** {registry.pinned() or '–'} · {ab.summary(ab.read(registry))}")
    if scheduler is not None:
        st = scheduler.status
        if st["running"]:
            p = st.get("progress") or {}
            if p.get("event") == "step" and p.get("max_steps"):
                text += f"\n\n⏳ training: step {p['step']}/{p['max_steps']}"
            else:
                text += f"\n\n⏳ adaptation run: {p.get('event', 'starting')}"
        elif st.get("last"):
            last = st["last"]
            text += f"\n\nLast run: **{last.get('status')}** {last.get('version') or ''} — {last.get('reason', '')}"
    return text


def build_adapters_tab(registry, scheduler=None, on_change: Callable[[], object] | None = None, authz=None,
                       timer_active: bool = True) -> dict:
    """Build the tab in the current Blocks context; see the module docstring."""
    if authz is None:
        from feedback.authz import Authz

        authz = Authz.from_settings(registry.settings)
    admin = authz.admin_only

    def changed():
        if on_change is not None:
            try:
                on_change()
            except Exception as e:  # the registry change stands; tell the user the swap failed
                gr.Warning(f"the app could not switch adapters: {e}")

    def choices():
        return list(reversed(registry.versions()))

    def refresh(selected=None):
        rows = registry.list()
        vs = choices()
        sel = selected if selected in vs else (vs[0] if vs else None)
        return (status_markdown(registry, scheduler), registry.serving() or "base", versions_frame(rows),
                gr.update(choices=vs, value=sel), *detail(sel))

    def detail(version):
        if not version:
            return {}, curves_frame(None), curves_frame(None), "", compare_frame(None)
        try:
            meta = registry.get(version)
        except RegistryError as e:
            return {"error": str(e)}, curves_frame(None), curves_frame(None), "", compare_frame(None)
        shown = {k: meta.get(k) for k in ("version", "state", "method", "kind", "created", "base_model", "metrics",
                                         "gate", "recipe", "rows")}
        shown["eval"] = meta.get("eval")
        lines = decision_lines(meta)
        return (shown, curves_frame(meta["folder"], ("loss",)),
                curves_frame(meta["folder"], ("rewards/margins", "rewards/accuracies")),
                f"**{version}: {lines[0]}**\n\n" + "\n".join(lines[1:]), compare_frame(meta))

    def act(fn, version=None):
        try:
            msg = fn(version)
            gr.Info(msg)
            changed()
        except (RegistryError, ValueError, KeyError) as e:
            gr.Warning(str(e))
        return refresh(version)

    def promote(v):
        if not v:
            raise ValueError("choose a version first")
        registry.promote(v)
        return f"{v} is now active" + (f" (pinned {registry.pinned()} is still served)" if registry.pinned() else "")

    def rollback(v):
        now = registry.rollback()
        return f"rolled back: now active {now or 'base model'}"

    def pin(v):
        if not v:
            raise ValueError("choose a version first")
        registry.pin(v)
        return f"pinned {v}"

    def pin_base(v):
        registry.pin("base")
        return "pinned the base model"

    def unpin(v):
        registry.pin(None)
        return f"unpinned: serving the active version ({registry.active() or 'base'})"

    def ab_start(v, share):
        if not v:
            raise ValueError("choose a version first")
        return ab.summary(ab.start(registry, v, share))

    def ab_stop(v):
        was = ab.stop(registry)
        return f"A/B test of {was['version']} stopped" if was else "no A/B test was running"

    def train(method, v):
        if scheduler is None:
            gr.Warning("no scheduler in this app (start it with KAIZEN_ADAPT_WATCH=1, or run `kaizen adapt`)")
        elif scheduler.trigger(None if method == "auto" else method):
            gr.Info("adaptation run started: datasets, training, evaluation, gate")
        else:
            gr.Warning("a run is already in progress")
        return refresh(v)

    last_seen = {"last": None}

    def tick(v):
        st = scheduler.status if scheduler is not None else {}
        last = (st.get("last") or {}).get("finished")
        if last and last != last_seen["last"]:
            first = last_seen["last"] is None
            last_seen["last"] = last
            if not first and (st["last"] or {}).get("status") == "promoted":
                changed()
            return refresh(v)
        return (status_markdown(registry, scheduler), registry.serving() or "base", *[gr.skip()] * 7)

    # In login mode the page config (/config, read by every logged-in user) holds none of the registry: the values
    # are filled on page load, for admins only.
    hide = authz.login_mode
    status = gr.Markdown("" if hide else status_markdown(registry, scheduler))
    with gr.Row():
        serving = gr.Textbox("" if hide else (registry.serving() or "base"), label="Serving", interactive=False,
                             scale=1)
        method = gr.Dropdown(["auto", "sft", "dpo", "kto", "full"], value="auto", label="Method", scale=1)
        train_btn = gr.Button("Train now", variant="primary", scale=1)
        refresh_btn = gr.Button("Refresh", variant="secondary", scale=1)
    table = gr.Dataframe(versions_frame([] if hide else registry.list()), label="Versions (newest first)",
                         interactive=False, wrap=True)
    with gr.Row():
        first = [] if hide else choices()
        version = gr.Dropdown(first, value=(first or [None])[0], label="Version", scale=2)
        promote_btn = gr.Button("Promote", scale=1)
        rollback_btn = gr.Button("Roll back", variant="stop", scale=1)
        pin_btn = gr.Button("Pin", scale=1)
        pin_base_btn = gr.Button("Pin base", scale=1)
        unpin_btn = gr.Button("Unpin", scale=1)
    with gr.Row():
        ab_share = gr.Slider(0.05, 0.95, value=0.2, step=0.05, label="A/B: share of new conversations", scale=2)
        ab_btn = gr.Button("Start A/B test of this version", scale=1)
        ab_stop_btn = gr.Button("Stop A/B test", scale=1)
    with gr.Row():
        loss_plot = gr.LinePlot(curves_frame(None), x="step", y="value", color="metric", title="Training loss",
                                height=260)
        reward_plot = gr.LinePlot(curves_frame(None), x="step", y="value", color="metric",
                                  title="Rewards (DPO / KTO)", height=260)
    decision = gr.Markdown()
    compare = gr.Dataframe(compare_frame(None), label="Held-out prompts: the active policy's answer and this "
                           "version's, side by side", interactive=False, wrap=True)
    details = gr.JSON(label="Metrics, evaluation report, gate")
    timer = gr.Timer(5, active=timer_active)

    outputs = [status, serving, table, version, details, loss_plot, reward_plot, decision, compare]
    refresh_btn.click(admin(refresh, "refresh the adapters"), [version], outputs, api_visibility="private")
    version.change(admin(detail, "read a version"), [version], [details, loss_plot, reward_plot, decision, compare],
                   api_visibility="private")
    for btn, fn in ((promote_btn, promote), (rollback_btn, rollback), (pin_btn, pin), (pin_base_btn, pin_base),
                    (unpin_btn, unpin)):
        btn.click(admin(lambda v, fn=fn: act(fn, v), fn.__name__.replace("_", " ")), [version], outputs,
                  api_visibility="private")
    ab_btn.click(admin(lambda v, share: act(lambda x: ab_start(x, share), v), "start an A/B test"),
                 [version, ab_share], outputs, api_visibility="private")
    ab_stop_btn.click(admin(lambda v: act(ab_stop, v), "stop the A/B test"), [version], outputs,
                      api_visibility="private")
    train_btn.click(admin(train, "train"), [method, version], outputs, api_visibility="private")
    timer.tick(admin(tick, "read the adapters status"), [version], outputs, api_visibility="private")
    if hide:
        from gradio.context import Context

        Context.root_block.load(authz.for_admins_quietly(refresh, len(outputs), "fill the adapters tab"), [version],
                                outputs, api_visibility="private")
    return {"status": status, "serving": serving, "table": table, "version": version, "details": details,
            "decision": decision, "compare": compare,
            "loss_plot": loss_plot, "reward_plot": reward_plot, "method": method, "train": train_btn,
            "refresh": refresh_btn, "promote": promote_btn, "rollback": rollback_btn, "pin": pin_btn,
            "pin_base": pin_base_btn, "unpin": unpin_btn, "ab_share": ab_share, "ab_start": ab_btn,
            "ab_stop": ab_stop_btn, "timer": timer}
