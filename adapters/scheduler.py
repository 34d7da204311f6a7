"""The adaptation loop: feedback -> datasets -> training -> evaluation -> registry -> gate -> promotion.

    result = run_once(settings, force=True)              # one run now (what `kaizen adapt` does)
    sched = Scheduler(settings, on_promote=swap)         # in the app: checks every `interval_s`
    sched.start(); ...; sched.trigger(); ...; sched.stop()

A run is due when `settings.adapt_min_events` feedback events arrived since the last run, or when any arrived and
`settings.adapt_hours` have passed. One run at a time across processes (an fcntl lock on
<adapters_dir>/.adapt.lock; a second caller gets {"status": "busy"}). Training and evaluation run in child
processes; the candidate is trained into a temporary folder and registered only when training finished, so a
failed or killed run changes nothing. The gate decides: promoted (ACTIVE swapped, `on_promote(version, folder)`
called when that version is what should be served, i.e. nothing is pinned) or retired (kept, listed, promotable by
hand).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from adapters.registry import Registry, RegistryError, write_json
from agent.settings import Settings

log = logging.getLogger(__name__)
STATE_FILE = "scheduler.json"
LOCK_FILE = ".adapt.lock"
MIN_ROWS = 4  # fewer training rows than this for a method: nothing to learn from
AUTO_ORDER = ("sft", "dpo", "kto")


# ---------------------------------------------------------------------------------------------- pure decisions
def due(new_events: int, hours_since: float | None, min_events: int, hours: float) -> tuple[bool, str]:
    """Is a run due? (decision, reason)."""
    if new_events <= 0:
        return False, "no new feedback events"
    if new_events >= min_events:
        return True, f"{new_events} new events >= {min_events}"
    if hours_since is not None and hours_since >= hours:
        return True, f"{new_events} new events and {hours_since:.1f} h since the last run (>= {hours} h)"
    return False, f"{new_events}/{min_events} new events, {hours_since or 0:.1f}/{hours} h"


def auto_methods(rows: dict[str, int], min_rows: int = MIN_ROWS) -> list[str]:
    """The methods an automatic run tries, in order (the next one only when the gate refused the previous one):
    every method of AUTO_ORDER with at least `min_rows` training rows, DPO first when the feedback holds more
    preference pairs than gold answers (mostly picks and up/down votes, few edits)."""
    methods = [m for m in AUTO_ORDER if rows.get(m, 0) >= min_rows]
    if "sft" in methods and "dpo" in methods and rows["dpo"] > rows["sft"]:
        methods.remove("dpo")
        methods.insert(0, "dpo")
    return methods


def choose_method(rows: dict[str, int], min_rows: int = MIN_ROWS) -> str | None:
    """The first method an automatic run trains: SFT when there are enough gold answers (edits, thumbs-up) unless
    pairs outnumber them, else DPO (pairs), else KTO (unpaired thumbs); None when no file has `min_rows` rows."""
    methods = auto_methods(rows, min_rows)
    return methods[0] if methods else None


# what each method learns from, in words: (a row, rows, where they come from)
DATA_WORDS = {
    "sft": ("gold answer", "gold answers", "corrected answers and 👍 answers"),
    "dpo": ("preference pair", "preference pairs", "picks between two answers, corrections, and a 👍 and a 👎 on two "
                                                   "answers to one question"),
    "kto": ("rated answer", "rated answers", "👍 or 👎 on answers that were not corrected"),
}


def _there_are(n: int, one: str, many: str) -> str:
    return "there are none yet" if n <= 0 else (f"there is 1 {one}" if n == 1 else f"there are {n} {many}")


def data_needs(counts: dict[str, int], method: str | None = None, min_rows: int = MIN_ROWS) -> str:
    """Why a run trained nothing, in words: for a chosen method, what it needs and what is there; for an automatic
    run, a sentence per method (an automatic run needs `min_rows` training rows of one kind, a chosen method one)."""
    if method:
        kind = "sft" if method == "full" else method
        one, many, source = DATA_WORDS.get(kind, (f"{kind} row", f"{kind} rows", "feedback"))
        return (f"Not enough feedback to train {method.upper()}: it needs at least one {one} ({source}); "
                f"{_there_are(counts.get(kind, 0), one, many)}.")
    lines = [f"{kind.upper()} needs at least {min_rows} {many} ({source}); "
             f"{_there_are(counts.get(kind, 0), one, many)}." for kind, (one, many, source) in DATA_WORDS.items()]
    return "Not enough feedback to train yet. " + " ".join(lines)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def hours_between(earlier: str | None, later: str) -> float | None:
    if not earlier:
        return None
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds() / 3600


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
    with open(root / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open_store(settings: Settings):
    try:
        from feedback.store import Store
    except ModuleNotFoundError as e:
        raise RuntimeError("the feedback store (feedback.store) is not installed") from e
    return Store.from_settings(settings)


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
    retired)."""
    from adapters.evaluate import gate, run_evaluation
    from adapters.train import TrainingError, run_training

    say = progress or (lambda e: None)
    t0 = time.perf_counter()
    with run_lock(settings) as mine:
        if not mine:
            return {"status": "busy", "reason": "another adaptation run is in progress"}
        registry = Registry(settings)
        registry.clean_tmp("run-")  # leftovers of killed runs (we hold the lock: none is live)
        state = read_state(settings)
        own_store = store is None
        store = store or _open_store(settings)
        started = now_iso()
        run_dir = None
        try:
            if not state.get("watching_since"):
                state["watching_since"] = started
            new = store.event_count(state.get("last_run"))
            decision, reason = due(new, hours_between(state.get("last_run") or state["watching_since"], started),
                                   settings.adapt_min_events, settings.adapt_hours)
            if not (force or decision):
                _save_state(settings, state)
                return {"status": "skipped", "reason": reason, "new_events": new}
            say({"event": "datasets", "new_events": new})
            from feedback.datasets import build_datasets
            from feedback.export import write_datasets

            from agent.templates import serving_system

            system = serving_system(settings.template, settings.templates_dir)  # train on what the app sends
            files, manifest = build_datasets(store.training_events(), system=system)
            counts = {k: len(v) for k, v in files.items()}
            methods = [method] if method else auto_methods(counts)[:max(1, max_attempts)]
            if not methods or counts.get("sft" if methods[0] == "full" else methods[0], 0) == 0:
                state.update(last_run=started, last_status="skipped")
                _save_state(settings, state)
                return {"status": "skipped", "new_events": new, "rows": counts, "reason": data_needs(counts, method)}
            run_dir = registry.tmp_folder(f"run-{methods[0]}")
            data_dir = run_dir / "data"
            write_datasets(data_dir, files, manifest)
            active = registry.active()
            active_folder = None
            if active is not None:
                try:
                    registry.validate(registry.folder(active))
                    active_folder = str(registry.folder(active))
                except RegistryError as e:
                    log.warning("active version %s does not validate (%s): comparing against the base", active, e)
                    active = None
            attempts = []
            for chosen in methods:  # automatic runs: the next method when the gate refuses the previous one
                adapter_dir = run_dir / f"adapter-{chosen}"
                say({"event": "training", "method": chosen, "rows": counts})
                metrics = run_training(chosen, data_dir, adapter_dir, settings, progress=say, timeout=timeout,
                                       recipe=recipe if recipe is not None and recipe.method == chosen else None,
                                       stop=stop)
                say({"event": "evaluating", "against": active or "base"})
                reports = run_evaluation(settings, data_dir, {"candidate": str(adapter_dir), "active": active_folder},
                                         run_dir / f"eval-{chosen}.json", config=eval_config, progress=say,
                                         timeout=timeout, stop=stop)
                promote, reasons = gate(reports["candidate"], reports["active"], margin)
                meta = {"method": chosen, "recipe": metrics.get("recipe"), "metrics": _plain(metrics),
                        "dataset": manifest, "rows": counts, "new_events": new,
                        "eval": {"candidate": reports["candidate"], "active": reports["active"],
                                 "active_version": active},
                        "gate": {"promote": promote, "reasons": reasons, "margin": margin}}
                version = registry.register(adapter_dir, meta)
                if promote:
                    promote, more = parity_gate(settings, registry, version)
                    reasons = reasons + more
                    if more:
                        registry.update_meta(version, gate={"promote": promote, "reasons": reasons, "margin": margin})
                if promote:
                    registry.promote(version)
                    status = "promoted"
                else:
                    registry.update_meta(version, state="retired")
                    status = "refused"
                attempts.append({"method": chosen, "version": version, "status": status,
                                 "reason": "; ".join(reasons)})
                say({"event": status, "version": version})
                if promote:
                    break
            state.update(last_run=started, last_status=status, last_version=version)
            _save_state(settings, state)
            swap_error = None
            if promote and on_promote is not None and registry.serving() == version:
                try:
                    on_promote(version, str(registry.folder(version)))
                except Exception as e:  # the app keeps serving what it served; the promotion stands
                    log.exception("on_promote(%s) failed", version)
                    swap_error = repr(e)
            return {"status": status, "version": version, "method": chosen, "new_events": new, "rows": counts,
                    "swap_error": swap_error, "train": _plain(metrics), "gate": {"promote": promote, "reasons": reasons},
                    "eval": {"candidate": _brief(reports["candidate"]), "active": _brief(reports["active"])},
                    "attempts": attempts, "seconds": round(time.perf_counter() - t0, 1),
                    "reason": "; ".join(reasons)}
        except (TrainingError, RegistryError, ValueError, RuntimeError, OSError) as e:
            log.warning("adaptation run failed: %s", e)
            state.update(last_run=started, last_status="failed", last_error=str(e)[:2000])
            _save_state(settings, state)
            return {"status": "failed", "error": str(e), "reason": str(e).splitlines()[0] if str(e) else "failed",
                    "seconds": round(time.perf_counter() - t0, 1)}
        finally:
            if run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)
            if own_store:
                store.close()


def parity_gate(settings: Settings, registry, version: str) -> tuple[bool, list[str]]:
    """When the app serves with llama.cpp: the version's GGUF LoRA must reproduce the peft adapter
    (adapters/parity.py). (passes, reasons); no reasons when there is nothing to check. The figures go in
    meta.json "parity"."""
    from adapters import parity
    from agent.engine import engine_kind

    meta = registry.get(version)
    gguf = (meta.get("gguf") or {}).get("file")
    if meta.get("kind") != "lora" or not gguf or engine_kind(settings) != "llamacpp":
        return True, []
    from agent.gguf import base_gguf
    from agent.model import resolve_base

    folder = Path(meta["folder"])
    try:
        figures = parity.measure(Path(resolve_base(settings.base_model, settings.models_dir)), folder,
                                 base_gguf(settings.base_model, settings.models_dir, settings.llama_quant), folder / gguf,
                                 threads=settings.threads)
    except Exception as e:  # a check that cannot run does not promote
        log.exception("parity check of %s failed", version)
        return False, [f"llama.cpp parity could not be measured: {e}"]
    ok, reasons = parity.verdict(figures)
    registry.update_meta(version, parity={**figures, "passed": ok})
    return ok, reasons


def _save_state(settings: Settings, state: dict) -> None:
    Path(settings.adapters_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(settings.adapters_dir) / STATE_FILE, state)


def _plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("recipe", "folder")}


def _brief(report: dict) -> dict:
    return {k: report.get(k) for k in ("pref", "similarity", "general")}


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
