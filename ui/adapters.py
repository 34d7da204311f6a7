"""The Adapters tab: versions, metrics, loss curves, train now / promote / roll back / pin / A/B test.

Call inside the app's Blocks:

    with gr.Tab("Adapters"):
        parts = build_adapters_tab(registry, scheduler, on_change)

- `registry`: `adapters.registry.Registry`; `authz`: `ui.authz.Authz` (default: from the registry's settings):
  every handler of the tab (they read or change adapters and start training) runs only for an admin, checked on
  the server whatever the UI shows; the status timer starts inactive unless `timer_active`, the app turns it on
  for admins; `scheduler`: `adapters.scheduler.Scheduler` or None (then "Train now"
  says so); `on_change()`: called with no arguments after any change of what should be served (promote,
  roll back, pin, unpin); the tab's buttons only write the registry, and the app passes its
  `adapters.watcher.RegistryWatcher.sync_now` here to apply the change at once (the watcher is the one owner of
  what the model serves; it would apply it within seconds anyway). Its return value is ignored.
- Live, per session: the page config holds none of the registry; the tab is filled on page load and tab select
  (admins only), and its timer (5 s) compares the session's `registry_signature` (versions and their meta.json
  times, active, pin, A/B) with what it showed: a change made anywhere, another process included, refreshes the
  tab; a run that finished since the session's last look arrives as a notice (`outcome_text`).
- Confirmation: Promote of a version the gate did not pass, and Roll back, only ask (a question row, the pending
  action kept in the session's gr.State); **Yes** carries it out if the active version is still the one it was
  asked about. `promote_checked` is the server-side rule (NeedsConfirmation without `confirmed`).
- Returns a dict of components: "status" (Markdown; while a run trains: `progress_text`, step k/N, loss, time
  left), "serving" (Textbox holding the served version or "base"), "table" (Dataframe), "version" (Dropdown),
  "details" (JSON), "decision" (Markdown: the gate's decision and reasons in words), "compare" (Dataframe: held-out
  prompts with the active and this version's answers), "loss_plot", "reward_plot", "accuracy_plot" (LinePlot, one
  series each), "method" (Dropdown), buttons "train", "refresh", "promote", "rollback", "pin", "pin_base",
  "unpin", "ab_start", "ab_stop" (with the "ab_share" Slider), "confirm", "cancel" (in "confirm_row", with
  "confirm_text"), the States "seen" and "pending", and "timer" (gr.Timer).
`versions_frame(rows)` and `curves_frame(folder)` (pure-ish: they read files, no Gradio) build the DataFrames.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import gradio as gr
import pandas as pd
from gradio.context import Context, get_render_context

from adapters import ab
from adapters.registry import RegistryError
from adapters.review import decision_lines, side_by_side

COLUMNS = ["served", "version", "state", "method", "rows", "final loss", "pref acc", "similarity", "gate", "created"]
CURVE_KEYS = {"loss": "loss", "rewards/margins": "reward margin", "rewards/accuracies": "reward accuracy"}
# (metrics.jsonl key, title, y axis, elem_id) of the curves drawn for a version
PLOTS = (("loss", "Training loss", "loss", "loss-plot"),
         ("rewards/margins", "Reward margin (DPO / KTO)", "chosen − rejected reward", "reward-plot"),
         ("rewards/accuracies", "Reward accuracy (DPO / KTO)", "share of pairs ranked right", "accuracy-plot"))


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
                if not isinstance(d, dict):
                    continue
                for k in keys:
                    step, value = _number(d.get("step")), _number(d.get(k))
                    if step is not None and value is not None:
                        rows.append({"step": step, "value": value, "metric": CURVE_KEYS.get(k, k)})
    # typed columns, also when empty: the plot's axes are numbers (an object column would be drawn as categories)
    return pd.DataFrame({"step": pd.Series([r["step"] for r in rows], dtype="float64"),
                         "value": pd.Series([r["value"] for r in rows], dtype="float64"),
                         "metric": pd.Series([r["metric"] for r in rows], dtype="str")})


def _number(x) -> float | None:
    """A finite number from a metrics value (numbers written as strings too); None otherwise."""
    if isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def compare_frame(meta: dict | None) -> pd.DataFrame:
    """Prompt | active | candidate rows of a version's evaluation (empty without one)."""
    return pd.DataFrame(side_by_side(meta) if meta else [], columns=["prompt", "active", "candidate"])


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def time_left(p: dict, now: float | None = None) -> float | None:
    """Seconds of training left at the step rate seen so far (None until two steps have been seen)."""
    step, total, first, t0, t1 = (p.get(k) for k in ("step", "max_steps", "first_step", "first_step_time",
                                                      "step_time"))
    if None in (step, total, first, t0, t1) or step <= first or t1 <= t0:
        return None
    rate = (step - first) / (t1 - t0)  # steps per second
    return max(0.0, (total - step) / rate - max(0.0, (now or t1) - t1))


STAGES = {"base": "the base model", "candidate": "the new version", "active": "the active version"}


def progress_text(p: dict | None, now: float | None = None) -> str:
    """One line for a run in progress (from `adapters.scheduler.merge_progress`): step k/N, the latest loss and
    the time left while training; what is being done otherwise. Never an internal event name."""
    p = p or {}
    method = (p.get("method") or "").upper() or "the adapter"
    phase = p.get("phase")
    if phase == "datasets":
        n = p.get("new_events")
        return "⏳ Building the training data" + (f" ({n} new feedback events)…" if n is not None else "…")
    if phase == "training":
        if p.get("step") is not None and p.get("max_steps"):
            text = f"⏳ Training {method}: step {p['step']}/{p['max_steps']}"
            if isinstance(p.get("loss"), (int, float)):
                text += f" · loss {p['loss']:.3f}"
            left = time_left(p, now)
            return text + (f" · about {_duration(left)} left" if left is not None else " · estimating the time left…")
        return f"⏳ Training {method}: loading the model…"
    if phase == "saving":
        return f"⏳ Saving the trained {method} adapter…"
    if phase == "evaluating":
        text = f"⏳ Evaluating the new {method} version against {p.get('against') or 'the base model'}"
        return text + (f": answering with {STAGES.get(p['stage'], p['stage'])}…" if p.get("stage") else "…")
    if phase == "gate":
        return f"⏳ The gate {'promoted' if p.get('status') == 'promoted' else 'refused'} {p.get('version')}; " \
               "finishing…"
    return "⏳ Starting the adaptation run…"


def outcome_text(last: dict) -> tuple[str, str]:
    """("info" | "warning", a sentence) for a finished run's result (`Scheduler.status["last"]`)."""
    status, version, method = last.get("status"), last.get("version"), (last.get("method") or "").upper()
    reason = str(last.get("reason") or last.get("error") or "").strip()
    reason = reason if len(reason) <= 600 else reason[:599] + "…"
    if status == "promoted":
        text = f"Training finished: {version} ({method}) passed the gate and is now active."
        if last.get("swap_error"):
            return "warning", text + f" The app could not switch to it: {last['swap_error']}"
        return "info", text
    if status == "refused":
        return "warning", (f"Training finished: the gate refused {version} ({method}), so it was not promoted"
                           + (f": {reason}." if reason else ".") + " It is listed below; you can still promote it.")
    if status == "skipped":
        return "warning", f"Nothing was trained. {reason}"
    if status == "busy":
        return "warning", "Another adaptation run (e.g. `kaizen adapt`) is in progress; try again when it ends."
    return "warning", f"The adaptation run failed: {reason or 'no reason given'}"


def notify(last: dict) -> None:
    level, text = outcome_text(last)
    (gr.Info if level == "info" else gr.Warning)(text, duration=20)


def registry_signature(registry) -> tuple:
    """What the tab shows of the registry, cheaply (names, meta.json times, pointers, A/B): when it changes, in this
    process or another (`kaizen adapt`, `kaizen adapters promote`), the tab refreshes."""
    versions = []
    for v in registry.versions():
        try:
            versions.append((v, (registry.root / v / "meta.json").stat().st_mtime_ns))
        except OSError:
            versions.append((v, None))
    return tuple(versions), registry.active(), registry.pinned(), tuple(sorted((ab.read(registry) or {}).items()))


class NeedsConfirmation(ValueError):
    """Promoting this version needs an explicit confirmation (the gate refused it, or never checked it)."""


def confirm_reason(meta: dict) -> str | None:
    """Why promoting a version needs a confirmation, in words; None when the gate passed it."""
    gate = meta.get("gate") or {}
    if gate.get("promote") is True:
        return None
    if gate.get("promote") is None:
        return f"{meta.get('version')} was never checked by the gate (registered by hand)."
    reasons = "; ".join(gate.get("reasons") or []) or "no reason recorded"
    return f"The gate refused {meta.get('version')}: {reasons}."


def promote_checked(registry, version: str | None, confirmed: bool = False) -> str:
    """Promote `version`; one the gate did not pass only with `confirmed` (else NeedsConfirmation, nothing done)."""
    if not version:
        raise ValueError("choose a version first")
    why = confirm_reason(registry.get(version))
    if why and not confirmed:
        raise NeedsConfirmation(why)
    registry.promote(version)
    return f"{version} is now active" + (f" (pinned {registry.pinned()} is still served)" if registry.pinned()
                                         else "")


def rollback_question(registry) -> str | None:
    """The confirmation question for a roll-back; None when there is nothing to roll back."""
    active = registry.active()
    if active is None:
        return None
    previous = (registry.history() or [None])[-1]
    return (f"Roll back: retire {active} and make {previous or 'the base model'} active again"
            f"{' (or an earlier version, if it no longer validates)' if previous else ''}?")


def status_markdown(registry, scheduler, now: float | None = None) -> str:
    text = (f"**Serving:** {registry.serving() or 'base model'} · **active:** {registry.active() or 'base'} · "
            f"**pinned:** {registry.pinned() or '–'} · {ab.summary(ab.read(registry))}")
    if scheduler is not None:
        st = scheduler.status
        if st["running"]:
            text += "\n\n" + progress_text(st.get("progress"), now)
        elif st.get("last"):
            last = st["last"]
            when = str(last.get("finished") or "")[:16].replace("T", " ")
            text += f"\n\nLast run{f' ({when} UTC)' if when else ''}: {outcome_text(last)[1]}"
    return text


def build_adapters_tab(registry, scheduler=None, on_change: Callable[[], object] | None = None, authz=None,
                       timer_active: bool = True) -> dict:
    """Build the tab in the current Blocks context; see the module docstring."""
    if authz is None:
        from ui.authz import Authz

        authz = Authz.from_settings(registry.settings)
    admin = authz.admin_only
    parent = get_render_context()

    def changed():
        if on_change is not None:
            try:
                on_change()
            except Exception as e:  # the registry change stands; tell the user the swap failed
                gr.Warning(f"the app could not switch adapters: {e}")

    def choices():
        return list(reversed(registry.versions()))

    def last_finished():
        return ((scheduler.status.get("last") if scheduler is not None else None) or {}).get("finished")

    def seen_now(seen, status_text):
        """The session's view of the registry after a full refresh (a new dict: gr.State values are per session)."""
        out = dict(seen or {})
        out.update(sig=registry_signature(registry), status=status_text)
        out.setdefault("last", last_finished())  # a session's first look announces no earlier run
        return out

    def refresh(selected=None, seen=None):
        rows = registry.list()
        vs = choices()
        sel = selected if selected in vs else (vs[0] if vs else None)
        text = status_markdown(registry, scheduler, time.time())
        return (text, registry.serving() or "base", versions_frame(rows), gr.update(choices=vs, value=sel),
                *detail(sel), seen_now(seen, text))

    def detail(version):
        if not version:
            return {}, *[curves_frame(None)] * len(PLOTS), "", compare_frame(None)
        try:
            meta = registry.get(version)
        except RegistryError as e:
            return {"error": str(e)}, *[curves_frame(None)] * len(PLOTS), "", compare_frame(None)
        shown = {k: meta.get(k) for k in ("version", "state", "method", "kind", "created", "base_model", "metrics",
                                         "gate", "recipe", "rows")}
        shown["eval"] = meta.get("eval")
        lines = decision_lines(meta)
        return (shown, *[curves_frame(meta["folder"], (key,)) for key, *_ in PLOTS],
                f"**{version}: {lines[0]}**\n\n" + "\n".join(lines[1:]), compare_frame(meta))

    def asking(pending):
        """The confirmation row's (visibility, question, its Yes button, pending action) for `pending` (None:
        hidden)."""
        if pending is None:
            return gr.update(visible=False), "", gr.skip(), None
        label = f"Yes, promote {pending['version']}" if pending["action"] == "promote" else "Yes, roll back"
        return gr.update(visible=True), f"**{pending['question']}**", gr.update(value=label), pending

    def act(fn, version, seen):
        try:
            msg = fn(version)
            gr.Info(msg)
            changed()
        except (RegistryError, ValueError, KeyError) as e:
            gr.Warning(str(e))
        return (*refresh(version, seen), *asking(None))

    def ask_promote(v, seen):
        try:
            meta = registry.get(v) if v else None
        except RegistryError as e:
            gr.Warning(str(e))
            return (*refresh(v, seen), *asking(None))
        why = confirm_reason(meta) if meta else None
        if why is None:
            return act(lambda x: promote_checked(registry, x, confirmed=False), v, seen)
        gr.Warning(f"{why} Confirm below to promote it anyway.")
        pending = {"action": "promote", "version": v, "active": registry.active(),
                   "question": f"{why} Promote {v} anyway? It would be served to everyone."}
        return (*[gr.skip()] * (len(shown) - 1), seen, *asking(pending))

    def ask_rollback(v, seen):
        question = rollback_question(registry)
        if question is None:
            gr.Warning("nothing to roll back: the base model is active")
            return (*refresh(v, seen), *asking(None))
        return (*[gr.skip()] * (len(shown) - 1), seen, *asking({"action": "rollback", "active": registry.active(),
                                                 "question": question}))

    def confirm(v, seen, pending):
        """Carries out the action this session asked about, if the registry is still as it was when asked."""
        if not pending:
            gr.Warning("nothing to confirm: press Promote or Roll back first")
            return (*refresh(v, seen), *asking(None))
        if registry.active() != pending["active"]:
            gr.Warning(f"the active version changed since you asked (now {registry.active() or 'base'}): nothing "
                       "was done; ask again")
            return (*refresh(v, seen), *asking(None))
        if pending["action"] == "promote":
            return act(lambda x: promote_checked(registry, pending["version"], confirmed=True), pending["version"],
                       seen)
        return act(rollback, v, seen)

    def cancel(v, seen):
        return (*[gr.skip()] * (len(shown) - 1), seen, *asking(None))

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

    def train(method, v, seen):
        seen = dict(seen or {})
        if scheduler is None:
            gr.Warning("no scheduler in this app (start it with KAIZEN_ADAPT_WATCH=1, or run `kaizen adapt`)")
        elif scheduler.trigger(None if method == "auto" else method):
            seen["last"] = last_finished()  # this session announces the outcome of the run it started
            gr.Info("Adaptation run started: training data, training, evaluation, gate. Progress shows above; "
                    "the outcome arrives as a notice.")
        else:
            gr.Warning("a run is already in progress")
        return refresh(v, seen)

    def tick(v, seen):
        """Every few seconds, per session: the outcome of a run that finished since the last look (a notice),
        the whole tab when the registry changed (here or in another process), else only a changed status."""
        seen = dict(seen or {})
        last = scheduler.status.get("last") if scheduler is not None else None
        marker = (last or {}).get("finished")
        if "last" in seen and marker != seen["last"] and last and (last.get("manual")
                                                                  or last.get("status") != "skipped"):
            notify(last)
        seen["last"] = marker
        if seen.get("sig") != registry_signature(registry):
            return refresh(v, seen)
        text = status_markdown(registry, scheduler, time.time())
        if text == seen.get("status"):
            return (*[gr.skip()] * (len(shown) - 1), seen)
        seen["status"] = text
        return (text, registry.serving() or "base", *[gr.skip()] * (len(shown) - 3), seen)

    # The page config (/config, read by every user, logged in or not) holds none of the registry: the values are
    # filled on page load and when the tab is selected, for admins only, and kept live by the timer.
    status = gr.Markdown("Loading the adapters…", elem_id="adapters-status")
    seen = gr.State(None)  # per session: the registry signature and status last shown, the last run announced
    pending = gr.State(None)  # per session: the promote / roll-back waiting for a confirmation
    with gr.Row():
        serving = gr.Textbox("", label="Serving", interactive=False, scale=1)
        method = gr.Dropdown(["auto", "sft", "dpo", "kto", "full"], value="auto", label="Method", scale=1)
        train_btn = gr.Button("Train now", variant="primary", scale=1)
        refresh_btn = gr.Button("Refresh", variant="secondary", scale=1)
    table = gr.Dataframe(versions_frame([]), label="Versions (newest first)", interactive=False, wrap=False,
                         elem_id="adapters-table")  # short cells: no header wrapped a letter a line on a phone
    with gr.Row():
        version = gr.Dropdown([], value=None, label="Version", scale=2, elem_id="adapters-version")
        promote_btn = gr.Button("Promote", scale=1)
        rollback_btn = gr.Button("Roll back", variant="stop", scale=1)
        pin_btn = gr.Button("Pin", scale=1)
        pin_base_btn = gr.Button("Pin base", scale=1)
        unpin_btn = gr.Button("Unpin", scale=1)
    with gr.Group(visible=False, elem_id="adapters-confirm") as confirm_row:
        confirm_text = gr.Markdown()
        with gr.Row():
            confirm_btn = gr.Button("Yes, do it", variant="stop", scale=1, elem_id="adapters-confirm-yes")
            cancel_btn = gr.Button("Cancel", scale=1, elem_id="adapters-confirm-no")
    with gr.Row():
        ab_share = gr.Slider(0.05, 0.95, value=0.2, step=0.05, label="A/B: share of new conversations", scale=2)
        ab_btn = gr.Button("Start A/B test of this version", scale=1)
        ab_stop_btn = gr.Button("Stop A/B test", scale=1)
    with gr.Row():  # one series a plot: gradio 6 draws no line in a colour-split plot that started empty
        loss_plot, reward_plot, accuracy_plot = (
            gr.LinePlot(curves_frame(None), x="step", y="value", title=title, x_title="step", y_title=y_title,
                        height=240, elem_id=elem_id, min_width=280) for _, title, y_title, elem_id in PLOTS)
    decision = gr.Markdown()
    compare = gr.Dataframe(compare_frame(None), label="Held-out prompts: the active policy's answer and this "
                           "version's, side by side", interactive=False, wrap=True)
    details = gr.JSON(label="Metrics, evaluation report, gate")
    timer = gr.Timer(5, active=timer_active)

    plots = [loss_plot, reward_plot, accuracy_plot]
    shown = [status, serving, table, version, details, *plots, decision, compare, seen]
    outputs = shown + [confirm_row, confirm_text, confirm_btn, pending]
    quiet = dict(api_visibility="private", show_progress="hidden")
    refresh_btn.click(admin(refresh, "refresh the adapters"), [version, seen], shown, api_visibility="private")
    version.change(admin(lambda v: (*detail(v), *asking(None)), "read a version"), [version],
                   [details, *plots, decision, compare, confirm_row, confirm_text, confirm_btn, pending],
                   api_visibility="private")
    promote_btn.click(admin(ask_promote, "promote"), [version, seen], outputs, api_visibility="private")
    rollback_btn.click(admin(ask_rollback, "roll back"), [version, seen], outputs, api_visibility="private")
    confirm_btn.click(admin(confirm, "confirm"), [version, seen, pending], outputs, api_visibility="private")
    cancel_btn.click(admin(cancel, "cancel"), [version, seen], outputs, api_visibility="private")
    for btn, fn in ((pin_btn, pin), (pin_base_btn, pin_base), (unpin_btn, unpin)):
        btn.click(admin(lambda v, s, fn=fn: act(fn, v, s), fn.__name__.replace("_", " ")), [version, seen],
                  outputs, api_visibility="private")
    ab_btn.click(admin(lambda v, share, s: act(lambda x: ab_start(x, share), v, s), "start an A/B test"),
                 [version, ab_share, seen], outputs, api_visibility="private")
    ab_stop_btn.click(admin(lambda v, s: act(ab_stop, v, s), "stop the A/B test"), [version, seen], outputs,
                      api_visibility="private")
    train_btn.click(admin(train, "train"), [method, version, seen], shown, api_visibility="private")
    timer.tick(admin(tick, "read the adapters status"), [version, seen], shown, **quiet)
    fill = authz.for_admins_quietly(refresh, len(shown), "fill the adapters tab")
    Context.root_block.load(fill, [version, seen], shown, **quiet)
    if isinstance(parent, gr.Tab):
        parent.select(fill, [version, seen], shown, **quiet)
    return {"status": status, "serving": serving, "table": table, "version": version, "details": details,
            "decision": decision, "compare": compare,
            "loss_plot": loss_plot, "reward_plot": reward_plot, "accuracy_plot": accuracy_plot, "method": method, "train": train_btn,
            "refresh": refresh_btn, "promote": promote_btn, "rollback": rollback_btn, "pin": pin_btn,
            "pin_base": pin_base_btn, "unpin": unpin_btn, "ab_share": ab_share, "ab_start": ab_btn,
            "ab_stop": ab_stop_btn, "timer": timer, "confirm": confirm_btn, "cancel": cancel_btn,
            "confirm_row": confirm_row, "confirm_text": confirm_text, "pending": pending, "seen": seen}
