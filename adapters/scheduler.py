"""The adaptation loop: feedback -> datasets -> training -> evaluation -> registry -> gate -> promotion.

    result = run_once(settings, force=True)              # one run now (what `kaizen adapt` does)
    sched = Scheduler(settings, on_promote=lambda v, folder: watcher.sync_now())   # in the app: every `interval_s`
    sched.start(); ...; sched.trigger(); ...; sched.stop()

A run is due when `settings.adapt_min_events` feedback events arrived since the last run, or when any arrived and
`settings.adapt_hours` have passed. One run at a time across processes (a `filelock` lock on
<adapters_dir>/.adapt.lock; a second caller gets {"status": "busy"}). Training and evaluation run in child
processes; the candidate is trained into a temporary folder and registered only when training finished, so a
failed or killed run changes nothing. The gate decides: promoted (ACTIVE swapped, `on_promote(version, folder)`
called when that version is what should be served, i.e. nothing is pinned) or retired (kept, listed, promotable by
hand). The stages are adapters/stages.py's; a run only writes the registry (the app's RegistryWatcher,
adapters/watcher.py, applies it to the model).
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from adapters import stages
from adapters.registry import Registry, RegistryError, write_json
from adapters.stages import (AUTO_ORDER, DATA_WORDS, MIN_ROWS, auto_methods, choose_method,  # noqa: F401  (re-exported)
                             data_needs, due, hours_between, now_iso, parity_gate)
from adapters.train import TrainingError
from agent.settings import Settings
from feedback.store import Store

log = logging.getLogger(__name__)
STATE_FILE = "scheduler.json"
LOCK_FILE = ".adapt.lock"


# ---------------------------------------------------------------------------------------------- state & lock
def read_state(settings: Settings) -> dict:
    try:
        return json.loads((Path(settings.adapters_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(settings: Settings):
    """Yields True when this caller holds the adaptation lock, False when another run holds it."""
    root = Path(settings.adapters_dir)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextlib.contextmanager
def _opened(settings: Settings, store):
    """`store`, or the settings' store opened for this run and closed after it."""
    if store is not None:
        yield store
        return
    store = Store.from_settings(settings)
    try:
        yield store
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- one run
def run_once(settings: Settings, store=None, force: bool = False, method: str | None = None,
             progress: Callable[[dict], None] | None = None, on_promote: Callable[[str, str], None] | None = None,
             margin: float = 0.05, recipe=None, eval_config=None, stop: threading.Event | None = None,
             timeout: float | None = None, max_attempts: int = 2) -> dict:
    """One pass of the loop. Returns {"status": "busy" | "skipped" | "failed" | "promoted" | "refused", ...}
    with "reason", and for trained runs "version", "method", "rows", "train" (metrics), "gate" {"promote",
    "reasons"}, "attempts" [{method, version, status, reason}], "seconds" (the fields of the last attempt); a
    failure has "error" and leaves the active version as it was. Without `method`, up to `max_attempts` methods
    are tried in `auto_methods` order until one passes the gate (each candidate is registered; refused ones are
    retired); an SFT candidate refused for no longer answering is first trained again with replay rows
    (`stages.next_attempts`). The stages are adapters/stages.py's, in order."""
    t0 = time.perf_counter()
    with run_lock(settings) as mine:
        if not mine:
            return {"status": "busy", "reason": "another adaptation run is in progress"}
        registry = Registry(settings)
        registry.clean_tmp("run-")  # leftovers of killed runs (we hold the lock: none is live)
        state, started = read_state(settings), now_iso()
        state["watching_since"] = state.get("watching_since") or started
        try:
            with _opened(settings, store) as store, contextlib.ExitStack() as cleanup:
                run = RunOptions(force=force, method=method, say=progress or (lambda e: None),
                                 on_promote=on_promote, margin=margin, recipe=recipe, eval_config=eval_config,
                                 stop=stop, timeout=timeout, max_attempts=max_attempts)
                looked, result = _run_stages(settings, registry, store, state, started, cleanup, run)
        except (TrainingError, RegistryError, ValueError, RuntimeError, OSError) as e:
            log.warning("adaptation run failed: %s", e)
            state["last_error"] = str(e)[:2000]
            looked = True  # a failed run counts as a run
            result = {"status": "failed", "error": str(e), "reason": str(e).splitlines()[0] if str(e) else "failed"}
        if looked:
            state.update(last_run=started, last_status=result["status"])
        _save_state(settings, state)
        return {**result, "seconds": round(time.perf_counter() - t0, 1)}


@dataclass(frozen=True)
class RunOptions:
    """How one run goes (`run_once`'s arguments): `say` gets its progress events, `on_promote(version, folder)`
    hears of a promotion that is now served."""
    force: bool = False
    method: str | None = None
    say: Callable[[dict], None] = lambda event: None
    on_promote: Callable[[str, str], None] | None = None
    margin: float = 0.05
    recipe: object = None
    eval_config: object = None
    stop: threading.Event | None = None
    timeout: float | None = None
    max_attempts: int = 2


def _run_stages(settings: Settings, registry: Registry, store, state: dict, started: str, cleanup,
                run: RunOptions) -> tuple[bool, dict]:
    """The loop's stages in order (adapters/stages.py): collect -> build -> write -> baseline, then per method
    train -> evaluate -> decide -> register -> promote until one is promoted. Returns (whether the run built
    datasets: it counts as the last run, the run's result)."""
    say = run.say
    seen = stages.collect(settings, store, state, run.force, now=started)
    if not seen.due:
        return False, {"status": "skipped", "reason": seen.reason, "new_events": seen.new_events}
    say({"event": "datasets", "new_events": seen.new_events})
    built = stages.build(settings, store, run.method, run.max_attempts)
    if not built.methods:
        return True, {"status": "skipped", "new_events": seen.new_events, "rows": built.counts, "reason": built.reason}
    run_dir = registry.tmp_folder(f"run-{built.methods[0]}")
    cleanup.callback(shutil.rmtree, run_dir, ignore_errors=True)
    data_dir, against = stages.write(built, run_dir / "data"), stages.baseline(registry)
    attempts = []
    plan = [(m, stages.first_recipe(m, run.recipe, stages.sft_answers(data_dir) if m == "sft" else []))
            for m in built.methods]
    while plan:  # automatic runs: the next method when the gate refuses the previous (stages.next_attempts)
        (chosen, recipe), plan = plan[0], plan[1:]
        tag = f"{chosen}-{len(attempts) + 1}"
        trained = stages.train(settings, chosen, data_dir, run_dir / f"adapter-{tag}", recipe, say,
                               run.timeout, run.stop, rows=built.counts)
        reports = stages.evaluate(settings, data_dir, trained.folder, against, run_dir / f"eval-{tag}.json",
                                  run.eval_config, say, run.timeout, run.stop)
        decision = stages.decide(reports, run.margin)
        version = stages.register(registry, trained, built, seen.new_events, reports, against, decision)
        status, decision = stages.promote(settings, registry, version, decision, say)
        attempts.append(stages.Outcome(chosen, version, status, decision, trained, reports))
        if status == "promoted":
            break
        if run.method is None:  # a method the caller chose is tried as asked, once
            plan = stages.next_attempts(plan, attempts[-1], recipe, run.max_attempts - len(attempts))
    state["last_version"] = attempts[-1].version
    return True, _result(attempts, built, seen, _announce(registry, attempts[-1], run.on_promote))


def _announce(registry: Registry, last: stages.Outcome, on_promote) -> str | None:
    """Tell `on_promote(version, folder)` about a promotion that is what should be served (nothing pinned).
    Returns the error it raised, if any (the promotion stands)."""
    if last.promoted and on_promote is not None and registry.serving() == last.version:
        try:
            on_promote(last.version, str(registry.folder(last.version)))
        except Exception as e:  # the app keeps serving what it served; the promotion stands
            log.exception("on_promote(%s) failed", last.version)
            return repr(e)
    return None


def _result(attempts: list[stages.Outcome], built: stages.Built, seen: stages.Collected, swap_error) -> dict:
    last = attempts[-1]
    return {"status": last.status, "version": last.version, "method": last.method, "new_events": seen.new_events,
            "rows": built.counts, "swap_error": swap_error, "train": stages.plain(last.trained.metrics),
            "gate": {"promote": last.decision.promote, "reasons": last.decision.reasons},
            "eval": {"candidate": stages.brief(last.reports["candidate"]), "active": stages.brief(last.reports["active"])},
            "attempts": [a.row() for a in attempts], "reason": "; ".join(last.decision.reasons)}


def _save_state(settings: Settings, state: dict) -> None:
    Path(settings.adapters_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(settings.adapters_dir) / STATE_FILE, state)


PHASES = {"datasets": "datasets", "training": "training", "saving": "saving", "evaluating": "evaluating",
          "promoted": "gate", "refused": "gate"}


def merge_progress(prev: dict | None, event: dict, now: float) -> dict:
    """The run's progress so far, folded from its events (pure): phase (datasets, training, saving, evaluating,
    gate), method, step / max_steps, the latest loss, first_step / first_step_time / step_time (for the step
    rate), stage of the evaluation, version and status at the gate; "event" is the latest event's name."""
    kind = event.get("event")
    p = {} if prev is None or kind == "datasets" else dict(prev)
    p.setdefault("run_started", now)
    p["event"], p["time"] = kind, now
    if kind in PHASES:
        p["phase"] = PHASES[kind]
    if kind == "datasets":
        p["new_events"] = event.get("new_events")
    elif kind == "training":  # a new attempt: its own steps and loss
        p.update(method=event.get("method"), step=None, max_steps=None, loss=None, first_step=None,
                 first_step_time=None, step_time=None, stage=None)
    elif kind == "step" and event.get("step") is not None:
        p.update(step=event["step"], max_steps=event.get("max_steps") or p.get("max_steps"), step_time=now)
        if p.get("first_step") is None:
            p.update(first_step=event["step"], first_step_time=now)
    elif kind == "log" and isinstance(event.get("loss"), (int, float)):
        p["loss"] = event["loss"]
    elif kind == "evaluating":
        p.update(against=event.get("against"), stage=None)
    elif kind == "eval":
        p["stage"] = event.get("stage")
    elif kind in ("promoted", "refused"):
        p.update(version=event.get("version"), status=kind)
    return p


# ---------------------------------------------------------------------------------------------- in the app
class Scheduler:
    """Runs `run_once` in a background thread: every `interval_s` (skipped when not due), or at once after
    `trigger()`. `stop()` ends the thread and kills a training child in progress (nothing is registered).
    `on_progress(event)` sees every progress event of a run; `status` holds the latest and the last result."""

    def __init__(self, settings: Settings, on_promote: Callable[[str, str], None] | None = None, store=None,
                 interval_s: float = 60.0, on_progress: Callable[[dict], None] | None = None, **run_kwargs):
        self.settings = settings
        self.on_promote = on_promote
        self.on_progress = on_progress
        self.store = store
        self.interval_s = interval_s
        self.run_kwargs = run_kwargs
        self.last: dict | None = None
        self.progress: dict | None = None
        self.running = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._forced: dict | None = None
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def start(self) -> "Scheduler":
        if self._thread and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="kaizen-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def trigger(self, method: str | None = None) -> bool:
        """Ask for a forced run now (a training run in progress: False, nothing queued)."""
        with self._guard:
            if self.running:
                return False
            self._forced = {"method": method}
        self._wake.set()
        if not (self._thread and self._thread.is_alive()):
            self.start()
        return True

    @property
    def status(self) -> dict:
        return {"alive": bool(self._thread and self._thread.is_alive()), "running": self.running,
                "last": self.last, "progress": self.progress}

    def _on_progress(self, event: dict) -> None:
        self.progress = merge_progress(self.progress, event, time.time())
        if self.on_progress is not None:
            self.on_progress(event)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._guard:
                forced, self._forced = self._forced, None
                self.running = True
                self.progress = None
            try:
                result = run_once(self.settings, store=self.store, force=forced is not None,
                                  method=(forced or {}).get("method"), progress=self._on_progress,
                                  on_promote=self.on_promote, stop=self._stop, **self.run_kwargs)
                if result["status"] != "skipped" or forced is not None or self.last is None:
                    self.last = {**result, "finished": now_iso(), "manual": forced is not None}
            except Exception as e:  # the loop must survive anything one run throws
                log.exception("scheduler run crashed")
                self.last = {"status": "failed", "error": repr(e), "reason": repr(e), "finished": now_iso(),
                             "manual": forced is not None}
            finally:
                with self._guard:
                    self.running = False
            self._wake.wait(self.interval_s)
            self._wake.clear()
