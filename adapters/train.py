"""Training: SFT, DPO, KTO (trl + peft LoRA) and a full fine-tune, in a separate process.

In-process (what the child runs, and what the lab calls):

    metrics = train("sft", data_dir, out_dir, settings, recipe=None, progress=print)

Out of process (what the app and the scheduler use, so chat stays responsive):

    metrics = run_training("sft", data_dir, out_dir, settings, progress=callback)   # spawns and waits
    python -m adapters.train --method sft --data DIR --out DIR [--recipe FILE] [--set key=value ...]

`data_dir` holds the TRL-schema files of `feedback.datasets` (`sft.jsonl` {"messages"}, `dpo.jsonl` {"prompt",
"chosen","rejected"}, `kto.jsonl` {"prompt","completion","label"}; extra columns are ignored). `out_dir` receives
safetensors only: `adapter_model.safetensors` + `adapter_config.json` (LoRA), or `model.safetensors` + `config.json`
+ tokenizer (full fine-tune), plus `metrics.jsonl` (one line per logged step), `train.json` (the summary returned)
and, out of process, `train.log`.

Speed on CPU (see bench/train_speed.py): no gradient checkpointing, best-fit packing of SFT rows into `max_length`
rows (no padding is computed; sequences are kept apart by position ids), loss on the answer only, torch threads =
settings.threads; fp32 weights, with bf16 autocast where the CPU has native bf16 (settings.train_precision:
auto | bf16 | fp32). On CUDA: bf16.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from agent import offline
from agent.files import write_json
from agent.priority import background
from agent.settings import Settings
from adapters.config import METHODS, Recipe, check_method, load_recipe, recipe_from_dict
from adapters.trainers import (DATA_FILE, check_rows, cpu_has_bf16, kto_weights, load_rows,  # noqa: F401
                               answer_shape, lora_config, read_jsonl, replay_rows, rows_for_steps, summarize,
                               to_prompt_completion,
                               trainer_args, training_rows, use_bf16)

MARK = "@@kaizen "  # prefix of the child's progress lines on stdout (anything else there is library chatter)
ROOT = Path(__file__).resolve().parents[1]
Progress = Callable[[dict], None]
log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training failed or was killed; nothing was registered."""


# ---------------------------------------------------------------------------------------------- recipes
def recipe_for(method: str, steps: int | None = None, batch_size: int | None = None,
               max_length: int | None = None, **overrides) -> Recipe:
    """The packaged recipe for `method` with a few common overrides (None = keep the recipe's value)."""
    return load_recipe(method, max_steps=steps, batch_size=batch_size, max_length=max_length, **overrides)


def _progress_callback(out_dir: Path, progress: Progress | None, started: float):
    from transformers import TrainerCallback

    log_path = out_dir / "metrics.jsonl"

    class Report(TrainerCallback):
        """Each logged dict -> a line of metrics.jsonl and a progress event; each step -> a progress event."""

        def on_step_end(self, args, state, control, **kw):
            if progress:
                progress({"event": "step", "step": state.global_step, "max_steps": state.max_steps,
                          "elapsed": round(time.perf_counter() - started, 2)})

        def on_log(self, args, state, control, logs=None, **kw):
            row = {"step": state.global_step, "elapsed": round(time.perf_counter() - started, 3),
                   **{k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}}
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if progress:
                progress({"event": "log", "max_steps": state.max_steps, **row})

    return Report()


def train(method: str, data_dir: str | Path, out_dir: str | Path, settings: Settings, recipe: Recipe | None = None,
          progress: Progress | None = None) -> dict:
    """Train `method` on `data_dir` into `out_dir` in this process. Returns the summary metrics (also written to
    out_dir/train.json): method, folder, kind ("lora" | "full"), steps, losses, tokens, seconds, tokens_per_s,
    trainable_params, rewards/* for DPO/KTO."""
    import shutil

    import datasets
    import torch
    from datasets import Dataset

    from agent.model import load_base

    check_method(method)
    recipe = recipe or load_recipe(method)
    if recipe.method != method:
        raise ValueError(f"recipe is for {recipe.method!r}, not {method!r}")
    rows = load_rows(method, data_dir)
    if method in ("dpo", "kto"):
        rows = rows_for_steps(rows, recipe, recipe.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()

    model, tok, device = load_base(settings)
    torch.set_num_threads(settings.threads)
    if method == "sft" and getattr(recipe, "replay", 0):
        shape = answer_shape([r["messages"][-1]["content"] for r in rows])
        replayed = replay_rows(model, tok, device, rows, recipe.replay, recipe.replay_tokens, shape=shape)
        rows = rows + replayed
        (progress or (lambda e: None))({"event": "replay", "rows": len(replayed), "shape": shape})
    model.train()
    model.config.use_cache = False
    say = progress or (lambda e: None)
    say({"event": "loaded", "method": method, "device": device, "rows": len(rows)})
    work = out / ".trainer"
    bf16 = use_bf16(device, getattr(settings, "train_precision", "auto"))
    args = trainer_args(method, recipe, work, device, len(rows), [r.get("label") for r in rows], bf16=bf16)
    data = Dataset.from_list(training_rows(method, rows))
    peft_config = None if method == "full" else lora_config(recipe)
    from trl import DPOTrainer, KTOTrainer, SFTTrainer

    cls = {"sft": SFTTrainer, "full": SFTTrainer, "dpo": DPOTrainer, "kto": KTOTrainer}[method]
    started = time.perf_counter()
    trainer = cls(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config,
                  callbacks=[_progress_callback(out, progress, started)])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    summary = summarize(method, trainer.state.log_history, seconds, len(rows), trainable, total)
    summary.update(folder=str(out), kind="full" if method == "full" else "lora", device=device,
                   dtype=str(next(model.parameters()).dtype).replace("torch.", ""), bf16_autocast=bf16,
                   recipe=recipe.to_dict())
    say({"event": "saving"})
    final = trainer.model
    final.eval()
    if method == "full":
        final.config.use_cache = True
        final.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    else:
        final.save_pretrained(out, safe_serialization=True)
        (out / "README.md").unlink(missing_ok=True)  # peft's model card template: not ours
    shutil.rmtree(work, ignore_errors=True)
    write_json(out / "train.json", summary)
    say({"event": "done", **{k: v for k, v in summary.items() if k != "recipe"}})
    return summary


# ---------------------------------------------------------------------------------------------- out of process
def settings_env(settings: Settings) -> dict:
    """KAIZEN_* variables that rebuild `settings` in a child process (Settings.from_env)."""
    import dataclasses

    env = {}
    for f in dataclasses.fields(settings):
        if f.name == "extra":
            continue
        value = getattr(settings, f.name)
        local = f.name == "base_model" and Path(str(value)).exists()
        if isinstance(f.default, Path) or isinstance(value, Path) or local:
            value = Path(value).resolve()  # the child sees the same folders whatever its working directory
        env["KAIZEN_" + f.name.upper()] = str(value)
    return env


def run_module(module: str, argv: list[str], settings: Settings, log_path: Path,
               progress: Progress | None = None, timeout: float | None = None,
               stop: threading.Event | None = None) -> dict:
    """Run `python -m module argv...` with `settings` in its environment; stream its progress lines to
    `progress` (the first event is {"event": "started", "pid": ...}); return its last "done" event.
    A non-zero exit, a kill, a timeout or `stop` being set raises TrainingError (stderr tail included)."""
    env = {**offline.ENV, **os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("GRADIO_SERVER_PORT", None)
    env.pop("GRADIO_SERVER_NAME", None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, *argv], env=env,
                                stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
                                start_new_session=True)
        background(proc.pid, settings.background_nice)
        say = progress or (lambda e: None)
        done: dict = {}
        failure: list[str] = []
        lines: deque[str] = deque(maxlen=20)
        timer = None

        def kill(reason: str):
            failure.append(reason)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

        if timeout:
            timer = threading.Timer(timeout, kill, args=(f"timed out after {timeout:.0f} s",))
            timer.start()
        watcher = None
        if stop is not None:
            def watch():
                while proc.poll() is None:
                    if stop.wait(0.5):
                        kill("stopped")
                        return
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        try:
            say({"event": "started", "pid": proc.pid, "module": module})
            for line in proc.stdout:
                if not line.startswith(MARK):
                    lines.append(line.rstrip())
                    continue
                try:
                    event = json.loads(line[len(MARK):])
                except json.JSONDecodeError:
                    continue
                if event.get("event") == "done":
                    done = event
                try:
                    say(event)
                except Exception:  # a broken progress callback must not kill the run
                    pass
            rc = proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:
                kill("interrupted")
                proc.wait()
    if rc != 0 or not done:
        why = failure[0] if failure else (f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}")
        raise TrainingError(f"{module} failed ({why}); log {log_path}:\n{_tail(log_path)}")
    return done


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    keep = [ln for ln in lines if "Warning" not in ln and "warnings.warn" not in ln]
    return "\n".join(keep[-n:])


def run_training(method: str, data_dir: str | Path, out_dir: str | Path, settings: Settings,
                 recipe: Recipe | None = None, progress: Progress | None = None, timeout: float | None = None,
                 stop: threading.Event | None = None) -> dict:
    """`train` in a child process (`python -m adapters.train`). Returns the summary (train.json); raises
    TrainingError when the child fails or is killed. The log is out_dir/train.log."""
    check_method(method)
    load_rows(method, data_dir)  # bad data: a clear error here, before a process is started
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    argv = ["--method", method, "--data", str(Path(data_dir).resolve()), "--out", str(out.resolve())]
    if recipe is not None:
        if recipe.method != method:
            raise ValueError(f"recipe is for {recipe.method!r}, not {method!r}")
        write_json(out / "recipe.json", recipe.to_dict())
        argv += ["--recipe", str((out / "recipe.json").resolve())]
    run_module("adapters.train", argv, settings, out / "train.log", progress, timeout, stop)
    return json.loads((out / "train.json").read_text(encoding="utf-8"))


def emit(event: dict) -> None:
    """Child side: one progress line for the parent."""
    sys.stdout.write(MARK + json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def _parse_sets(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep:
            raise ValueError(f"--set {p!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adapters.train", description="Train one adapter (or a full model).")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--data", required=True, help="folder with sft.jsonl / dpo.jsonl / kto.jsonl")
    p.add_argument("--out", required=True, help="output folder (safetensors + metrics)")
    p.add_argument("--recipe", help="recipe file (YAML or JSON); default adapters/recipes/<method>.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    args = p.parse_args(argv)
    try:
        overrides = _parse_sets(args.set)
        if args.recipe and args.recipe.endswith(".json"):
            recipe = recipe_from_dict(args.method, {**json.loads(Path(args.recipe).read_text()), **overrides})
        else:
            recipe = load_recipe(args.method, args.recipe, **overrides)
        train(args.method, args.data, args.out, Settings.from_env(), recipe, progress=emit)
    except ValueError as e:
        print(f"adapters.train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
