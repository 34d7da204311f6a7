"""The adaptation loop's stages, in order; `adapters.scheduler.run_once` calls them one after the other.

    collect   -> Collected  how many feedback events arrived since the last run; is a run due?
    build     -> Built      the SFT / DPO / KTO datasets from the store, their row counts, the methods to try
    write     -> Path       the datasets written to a folder (what training and evaluation read)
    baseline  -> Baseline   the version a candidate is compared against (the active one, or the base)
    train     -> Trained    a LoRA (or full) candidate trained in a child process
    evaluate  -> dict       held-out reports of the candidate and the baseline (child process)
    decide    -> Decision   the gate: promote or not, and why
    register  -> str        the candidate added to the registry (a new version)
    promote   -> Outcome    the llama.cpp parity check, then ACTIVE swapped (promoted) or the version retired

Each stage is a plain function of explicit inputs and is runnable alone for debugging (prints JSON):

    python -m adapters.stages collect [--force]
    python -m adapters.stages build --out DIR [--method sft]
    python -m adapters.stages train --method sft --data DIR --out DIR [--steps N]
    python -m adapters.stages evaluate --data DIR (--version vN | --adapter DIR) [--against active|base|vM] --out FILE
    python -m adapters.stages decide --report FILE [--margin 0.05]
    python -m adapters.stages register --adapter DIR [--method sft]
    python -m adapters.stages promote --version vN --report FILE [--margin 0.05]

No stage changes what the app serves: `promote` writes the registry, and the app's `RegistryWatcher`
(adapters/watcher.py) applies it to the model.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Callable

from adapters import parity
from adapters.evaluate import EvalConfig, gate, run_evaluation
from adapters.gate import lost_answers, lost_reading
from adapters.registry import Registry, RegistryError
from adapters.train import recipe_for, run_training
from adapters.trainers import DATA_FILE, answer_shape, read_jsonl
from agent import offline
from agent.engine import engine_kind
from agent.files import now_iso
from agent.gguf import base_gguf
from agent.model import resolve_base
from agent.settings import Settings
from agent.templates import training_prompts
from feedback.datasets import build_datasets
from feedback.export import write_datasets
from feedback.store import Store

log = logging.getLogger(__name__)
MIN_ROWS = 4  # fewer training rows than this for a method: nothing to learn from
REPLAY_ON_LOST_ANSWERS = 0.25  # the replay share of the SFT retry after a candidate that stopped answering or reading
REPLAY_ON_FIXED_TEXT = 0.25  # the replay share of a first SFT attempt whose answers share a fixed opening or ending
AUTO_ORDER = ("sft", "dpo", "kto")
Progress = Callable[[dict], None]


def _quiet(event: dict) -> None:
    pass


# ---------------------------------------------------------------------------------------------- pure decisions
def hours_between(earlier: str | None, later: str) -> float | None:
    if not earlier:
        return None
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds() / 3600


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


def first_recipe(method: str, recipe, answers: list[str]):
    """The recipe of a run's first `method` attempt: the caller's when given; for SFT on the packaged recipe, with
    replay rows (`REPLAY_ON_FIXED_TEXT`) when most training answers share a fixed opening or ending
    (`trainers.answer_shape`: a house phrase, a sign-off), since that is the text an adapter learns in place of the
    answers; None (the packaged recipe) otherwise. Measured (bench/style_suite.py, 60 edits, 32 unseen prompts, the
    replayed answers shaped): opening 94% -> 97% in the style and relevance 0.61 -> 0.64 (base 0.69); a sign-off
    refused as collapsed without replay, promoted with it at 91%; but short answers 94% -> 81% (refused) and bullets
    94% -> 91% with 9% loops: styles without fixed text are learned better without replay."""
    if method != "sft" or recipe is not None:
        return recipe
    shape = answer_shape(answers)
    return recipe_for("sft", replay=REPLAY_ON_FIXED_TEXT) if shape["opening"] or shape["ending"] else None


def sft_answers(data_dir: Path) -> list[str]:
    """The gold answers of the written SFT dataset (none when there is no SFT file)."""
    path = Path(data_dir) / DATA_FILE["sft"]
    return [r["messages"][-1]["content"] for r in read_jsonl(path)] if path.exists() else []


def next_attempts(plan: list, outcome: "Outcome", recipe, attempts_left: int) -> list:
    """The attempts an automatic run still makes after a refused one: `plan` ([(method, recipe or None), ...]),
    led by one more SFT attempt with the base's own answers to other prompts mixed in (recipe `replay`) when the
    refused candidate was SFT without replay and the gate said it stopped answering (`gate.lost_answers`) or reading
    the passages it is given (`gate.lost_reading`; replay rows include passage questions the base reads right), at
    most `attempts_left` in all. Measured (bench/style_suite.py, 60 edits into a sign-off, 32 unseen prompts): the SFT
    adapter answered 3 chatty prompts with the bare sign-off and was refused ("collapse: 7% of answers are only
    text repeated..."); with replay 0.25 (and passage questions) it was promoted: no bare sign-off, 100% distinct,
    relevance 0.66 (base 0.69), in the style 84%, 91% with the replayed answers shaped (such a style now replays
    from its first attempt: `first_recipe`). A TL;DR adapter that answered passage questions with a TL;DR of the
    passage (reading 12% vs 50%) read 25% after the retry: still refused. Replay is on from the start only where
    the answers share fixed text (`first_recipe`): on the other styles SFT learns cleanly it costs style (short
    94% -> 81%)."""
    reasons = outcome.decision.reasons
    if outcome.method == "sft" and not outcome.promoted and (lost_answers(reasons) or lost_reading(reasons)):
        base = recipe if recipe is not None and recipe.method == "sft" else recipe_for("sft")
        if not base.replay:
            plan = [("sft", replace(base, replay=REPLAY_ON_LOST_ANSWERS))] + list(plan)
    return list(plan)[:max(0, attempts_left)]


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


# feedback that the datasets leave out on purpose, in words (the manifest's `dropped` event ids, per reason)
LEFT_OUT_WORDS = {
    "private_documents": "on answers from the users' own documents (those never train the shared adapter)",
    "grounded": "on answers written from retrieved documents (a row would hold the answer without the sources "
                "it cites)",
    "flagged": "carrying a suspicious correction (links, markup or injected instructions)",
    "stopped_answer": "taking an answer the user stopped as good",
}


def left_out(manifest: dict) -> str:
    """A sentence on the feedback the datasets left out on purpose (each event counted once, whatever rows it would
    have made), so "not enough feedback" is not a mystery; "" when nothing was. Pure."""
    parts = []
    for reason, words in LEFT_OUT_WORDS.items():
        events = {e for kind in manifest.get("dropped", {}).values() for e in kind.get(reason, [])}
        if events:
            parts.append(f"{len(events)} {'gesture' if len(events) == 1 else 'gestures'} {words}")
    return f"Left out: {'; '.join(parts)}." if parts else ""


# ---------------------------------------------------------------------------------------------- results
@dataclass
class Collected:
    new_events: int  # feedback events since the last run
    due: bool  # a run goes ahead (forced, or due by the thresholds)
    reason: str  # why it is due or not, in words
    started: str  # this run's time (the next run counts events from here)
    watching_since: str  # since when the loop has been watching (for the hours threshold before a first run)


@dataclass
class Built:
    files: dict[str, list[dict]]  # dataset name -> rows
    manifest: dict
    counts: dict[str, int]  # rows per dataset
    methods: list[str]  # the methods to try, in order ([] = nothing to train)
    reason: str = ""  # why nothing is trained (when `methods` is empty)

    def brief(self) -> dict:
        return {"counts": self.counts, "methods": self.methods, "reason": self.reason}


@dataclass
class Baseline:
    version: str | None  # the active version a candidate must beat (None = the base model)
    folder: str | None


@dataclass
class Trained:
    method: str
    folder: Path
    metrics: dict  # train.json


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    margin: float


@dataclass
class Outcome:
    method: str
    version: str
    status: str  # "promoted" | "refused"
    decision: Decision
    trained: Trained = field(repr=False)
    reports: dict = field(repr=False)

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    def row(self) -> dict:
        """The attempt as `run_once` lists it."""
        return {"method": self.method, "version": self.version, "status": self.status,
                "reason": "; ".join(self.decision.reasons)}


def plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("recipe", "folder")}


def brief(report: dict | None) -> dict:
    return {k: (report or {}).get(k) for k in ("pref", "similarity", "general")}


# ---------------------------------------------------------------------------------------------- the stages
def collect(settings: Settings, store, state: dict, force: bool = False, now: str | None = None) -> Collected:
    """Count the feedback events since `state["last_run"]` and decide whether a run is due (`force`: always).
    `now`: this run's time (default: now)."""
    started = now or now_iso()
    watching_since = state.get("watching_since") or started
    new = store.event_count(state.get("last_run"))
    decision, reason = due(new, hours_between(state.get("last_run") or watching_since, started),
                           settings.adapt_min_events, settings.adapt_hours)
    return Collected(new, force or decision, reason, started, watching_since)


def build(settings: Settings, store, method: str | None = None, max_attempts: int = 2) -> Built:
    """The training datasets from the store (each prompt as the app sent it: the template its answer was generated
    with, else the app's default system prompt) and the methods to try: `method` when given, else up to
    `max_attempts` of `auto_methods`; none when the data is too thin."""
    system, templates = training_prompts(settings.template, settings.templates_dir)  # train on what the app sends
    files, manifest = build_datasets(store.training_events(), system=system, templates=templates)
    counts = {k: len(v) for k, v in files.items()}
    methods = [method] if method else auto_methods(counts)[:max(1, max_attempts)]
    if not methods or counts.get("sft" if methods[0] == "full" else methods[0], 0) == 0:
        return Built(files, manifest, counts, [], " ".join(filter(None, [data_needs(counts, method),
                                                                          left_out(manifest)])))
    return Built(files, manifest, counts, methods)


def write(built: Built, data_dir: Path) -> Path:
    """Write the datasets (and their manifest) to `data_dir`."""
    write_datasets(data_dir, built.files, built.manifest)
    return Path(data_dir)


def baseline(registry: Registry) -> Baseline:
    """The active version, when it still validates (else the base model, with a warning)."""
    active = registry.active()
    if active is None:
        return Baseline(None, None)
    try:
        registry.validate(registry.folder(active))
    except RegistryError as e:
        log.warning("active version %s does not validate (%s): comparing against the base", active, e)
        return Baseline(None, None)
    return Baseline(active, str(registry.folder(active)))


def train(settings: Settings, method: str, data_dir: Path, out_dir: Path, recipe=None, progress: Progress = _quiet,
          timeout: float | None = None, stop: threading.Event | None = None, rows: dict | None = None) -> Trained:
    """Train a `method` candidate into `out_dir` in a child process (`recipe` only when it is for `method`)."""
    progress({"event": "training", "method": method, "rows": rows})
    metrics = run_training(method, data_dir, out_dir, settings, progress=progress, timeout=timeout,
                           recipe=recipe if recipe is not None and recipe.method == method else None, stop=stop)
    return Trained(method, Path(out_dir), metrics)


def evaluate(settings: Settings, data_dir: Path, candidate: str | Path, against: Baseline, out_file: Path,
             config: EvalConfig | None = None, progress: Progress = _quiet, timeout: float | None = None,
             stop: threading.Event | None = None) -> dict:
    """{"candidate": report, "active": report}: the candidate and the baseline on the held-out data."""
    progress({"event": "evaluating", "against": against.version or "base"})
    return run_evaluation(settings, data_dir, {"candidate": str(candidate), "active": against.folder}, out_file,
                          config=config, progress=progress, timeout=timeout, stop=stop)


def decide(reports: dict, margin: float = 0.05) -> Decision:
    """The gate over the two reports (adapters/gate.py)."""
    promote, reasons = gate(reports["candidate"], reports["active"], margin)
    return Decision(promote, reasons, margin)


def register(registry: Registry, trained: Trained, built: Built, new_events: int, reports: dict, against: Baseline,
             decision: Decision) -> str:
    """Add the candidate to the registry with what made it (recipe, data, evaluation, gate). Returns its version."""
    meta = {"method": trained.method, "recipe": trained.metrics.get("recipe"), "metrics": plain(trained.metrics),
            "dataset": built.manifest, "rows": built.counts, "new_events": new_events,
            "eval": {"candidate": reports["candidate"], "active": reports["active"], "active_version": against.version},
            "gate": asdict(decision)}
    return registry.register(trained.folder, meta)


def parity_gate(settings: Settings, registry, version: str) -> tuple[bool, list[str]]:
    """When the app serves with llama.cpp: the version's GGUF LoRA must reproduce the peft adapter
    (adapters/parity.py). (passes, reasons); no reasons when there is nothing to check. The figures go in
    meta.json "parity"."""
    meta = registry.get(version)
    gguf = (meta.get("gguf") or {}).get("file")
    if meta.get("kind") != "lora" or not gguf or engine_kind(settings) != "llamacpp":
        return True, []
    folder = Path(meta["folder"])
    try:
        figures = parity.measure_apart(settings, Path(resolve_base(settings.base_model, settings.models_dir)), folder,
                                       base_gguf(settings.base_model, settings.models_dir, settings.llama_quant),
                                       folder / gguf, folder / "parity.log")
    except Exception as e:  # a check that cannot run does not promote
        log.exception("parity check of %s failed", version)
        return False, [f"llama.cpp parity could not be measured: {e}"]
    ok, reasons = parity.verdict(figures)
    registry.update_meta(version, parity={**figures, "passed": ok})
    return ok, reasons


def promote(settings: Settings, registry: Registry, version: str, decision: Decision,
            progress: Progress = _quiet) -> tuple[str, Decision]:
    """A version the gate passed is checked for llama.cpp parity, then made active ("promoted"); otherwise it is
    retired ("refused"). Returns (status, the final decision). Only the registry is written."""
    if decision.promote:
        ok, more = parity_gate(settings, registry, version)
        decision = Decision(ok, decision.reasons + more, decision.margin)
        if more:
            registry.update_meta(version, gate=asdict(decision))
    if decision.promote:
        registry.promote(version)
        status = "promoted"
    else:
        registry.update_meta(version, state="retired")
        status = "refused"
    progress({"event": status, "version": version})
    return status, decision


# ---------------------------------------------------------------------------------------------- debugging CLI
def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def _reports(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    from adapters.scheduler import read_state  # the scheduler's bookkeeping (it imports this module)

    offline.silence()  # an entry point: offline from here on (the training and evaluation children get offline.ENV)
    p = argparse.ArgumentParser(prog="python -m adapters.stages", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    q = sub.add_parser("collect", help="new feedback events since the last run; is a run due?")
    q.add_argument("--force", action="store_true")
    q = sub.add_parser("build", help="build the datasets and write them to --out")
    q.add_argument("--out", required=True)
    q.add_argument("--method", default=None)
    q.add_argument("--max-attempts", type=int, default=2)
    q = sub.add_parser("train", help="train a candidate from a data folder")
    q.add_argument("--method", required=True)
    q.add_argument("--data", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--steps", type=int, default=None)
    q = sub.add_parser("evaluate", help="evaluate a version or adapter folder against the active version or base")
    q.add_argument("--data", required=True)
    who = q.add_mutually_exclusive_group(required=True)
    who.add_argument("--version")
    who.add_argument("--adapter")
    q.add_argument("--against", default="active", help="active | base | a version")
    q.add_argument("--out", required=True, help="the reports (JSON)")
    q = sub.add_parser("decide", help="the gate over an evaluation's reports")
    q.add_argument("--report", required=True)
    q.add_argument("--margin", type=float, default=0.05)
    q = sub.add_parser("register", help="add a trained folder to the registry (a candidate)")
    q.add_argument("--adapter", required=True)
    q.add_argument("--method", default=None)
    q = sub.add_parser("promote", help="the gate, parity, then promote or retire a registered version")
    q.add_argument("--version", required=True)
    q.add_argument("--report", required=True)
    q.add_argument("--margin", type=float, default=0.05)
    args = p.parse_args(argv)
    settings = Settings.from_env()
    registry = Registry(settings)
    say = (lambda e: print(json.dumps(e, default=str), file=sys.stderr))
    if args.stage in ("collect", "build"):
        store = Store.from_settings(settings)
        try:
            if args.stage == "collect":
                _print(asdict(collect(settings, store, read_state(settings), args.force)))
            else:
                built = build(settings, store, args.method, args.max_attempts)
                write(built, Path(args.out))
                _print({**built.brief(), "data": args.out})
        finally:
            store.close()
    elif args.stage == "train":
        recipe = recipe_for(args.method, steps=args.steps) if args.steps else None
        recipe = first_recipe(args.method, recipe, sft_answers(Path(args.data)) if args.method == "sft" else [])
        _print(plain(train(settings, args.method, Path(args.data), Path(args.out), recipe, say).metrics))
    elif args.stage == "evaluate":
        candidate = registry.folder(args.version) if args.version else Path(args.adapter)
        against = baseline(registry) if args.against == "active" else (
            Baseline(None, None) if args.against == "base" else Baseline(args.against, str(registry.folder(args.against))))
        reports = evaluate(settings, Path(args.data), candidate, against, Path(args.out), progress=say)
        _print({"candidate": brief(reports["candidate"]), "active": brief(reports["active"]), "out": args.out})
    elif args.stage == "decide":
        _print(asdict(decide(_reports(args.report), args.margin)))
    elif args.stage == "register":
        _print({"version": registry.register(args.adapter, {"method": args.method} if args.method else None)})
    elif args.stage == "promote":
        status, decision = promote(settings, registry, args.version, decide(_reports(args.report), args.margin), say)
        _print({"version": args.version, "status": status, **asdict(decision)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
