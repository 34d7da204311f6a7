"""The techniques lab: one evaluation set through the base model, prompt engineering, RAG, SFT / DPO / KTO LoRA and
a full fine-tune, side by side, with equal training budgets; a report (table, plots, verdict) in an output folder.

    kaizen lab --task squad|style|oasst --techniques base,prompt,rag,sft,dpo,kto,full \
               --budget-steps 40 --limit 30 --out DIR

What each technique changes (and nothing else): `base` — the plain template; `prompt` — the task's engineered
template; `rag` — the product's retriever (Chroma + BM25) over the task's documents, answers through the grounded
template; `sft`/`dpo`/`kto` — a LoRA adapter trained by `adapters.train` on the task's training rows, answering with
the plain template; `full` — every weight trained (SFT rows), answering with the plain template.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lab import measure as lm
from lab.report import LABELS, write_report
from lab.tasks import TASKS, LabTask, load_task
from agent.chat import Answerer
from agent.settings import Settings
from agent.templates import Template

TECHNIQUES = ("base", "prompt", "rag", "sft", "dpo", "kto", "full")
TRAINED = ("sft", "dpo", "kto", "full")
DATA_KIND = {"sft": "sft", "dpo": "dpo", "kto": "kto", "full": "sft"}  # full fine-tuning = SFT on all weights
LATENCY_SAMPLES = 5  # generations timed per technique on preference tasks (which are scored without generating)
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Budget:
    """The one training budget every trained technique gets. `examples`: None = steps x batch_size, capped at the
    smallest training set among the chosen methods (the same rows count for all)."""

    steps: int = 40
    batch_size: int = 2
    max_length: int = 256
    examples: int | None = None

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.max_length < 32:
            raise ValueError("budget: steps and batch size must be >= 1 and max length >= 32")
        if self.examples is not None and self.examples < 1:
            raise ValueError("budget: examples must be >= 1")


def parse_techniques(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """'base,rag,sft' -> ['base', 'rag', 'sft'] in the lab's order; clear error on an unknown one."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in names if t not in TECHNIQUES]
    if unknown or not names:
        raise ValueError(f"unknown technique(s) {unknown or text!r}; choose from {','.join(TECHNIQUES)}")
    return [t for t in TECHNIQUES if t in names]


def training_examples(task: LabTask, methods: list[str], budget: Budget) -> int:
    """How many training rows every trained method gets (equal for all)."""
    sizes = [len(task.train[DATA_KIND[m]]) for m in methods]
    if not sizes:
        return 0
    if min(sizes) == 0:
        empty = [m for m, n in zip(methods, sizes) if n == 0]
        raise ValueError(f"task {task.name!r} has no training rows for {', '.join(empty)}")
    wanted = budget.examples or budget.steps * budget.batch_size
    return min(wanted, *sizes)


class LabAnswerer(Answerer):
    """The product's answer pipeline, with the task's engineered template available by name."""

    def __init__(self, model, settings: Settings, kb=None, extra: dict[str, Template] | None = None):
        super().__init__(model, settings, kb)
        self.extra = extra or {}

    def templates(self) -> dict[str, Template]:
        return {**super().templates(), **self.extra}


@dataclass
class Lab:
    """Everything one run shares: settings, task, the loaded base model, the budget, the output folder."""

    settings: Settings
    task: LabTask
    model: object  # agent.model.ChatModel
    budget: Budget
    examples: int
    work: Path
    progress: Progress
    isolate: bool = True  # train in a child process
    kb: object = None
    ref_pairs: list | None = None  # the base model's (logp chosen, logp rejected) per preference item

    def answerer(self, model=None, kb=None) -> LabAnswerer:
        return LabAnswerer(model or self.model, dataclasses.replace(self.settings, temperature=0.0), kb,
                           {self.task.prompt_template.name: self.task.prompt_template})


# ---------------------------------------------------------------------------------------------- evaluation
def sources_for(answerer: LabAnswerer, question: str, max_new: int) -> tuple[str, list]:
    """The reference block the grounded template gets (same budget rule as agent.chat.Answerer.answer)."""
    from agent.retrieval import format_sources

    hits, _ = answerer.retrieve(question, "on")
    budget = max(400, (answerer.model.max_context - max_new - 200) * 3 - len(question))
    return format_sources(hits, max_chars=budget), hits


def evaluate(lab: Lab, answerer: LabAnswerer, *, template: str, rag: str, adapter: str | None,
             relative: bool = False) -> dict:
    """Quality and serving costs of one technique on the task's items."""
    task = lab.task
    doc_names = None
    if task.name == "squad" and rag == "on":
        from agent.ingest import display_name

        doc_names = {i["doc"]: display_name(i["doc"]) for i in task.items}
    if task.kind == "generate":
        return lm.answer_items(answerer, task, task.items, template=template, rag=rag, adapter=adapter, score=True,
                               doc_names=doc_names, progress=lambda f, m: lab.progress(f, m))
    tmpl = answerer.template(template)
    prompts, used = [], 0
    for n, item in enumerate(task.items):
        history, question = lm.history_and_question(item)
        variables = {}
        if rag == "on":
            variables["sources"], hits = sources_for(answerer, question, task.max_new_tokens)
            used += bool(hits)
        prompts.append(tmpl.render(question, history, **variables))
    lab.progress(0.3, f"scoring {len(task.items)} preference pairs")
    pairs = lm.pair_logps(answerer.model, prompts, task.items, adapter)
    ref = reference_pairs(lab) if relative else None
    lab.progress(0.7, "timing answers")
    out = lm.answer_items(answerer, task, task.items[:LATENCY_SAMPLES], template=template, rag=rag, adapter=adapter,
                          score=False)
    out["metrics"] = lm.preference_scores(pairs, ref)
    out["sources_used"] = used if rag == "on" else 0
    out["reward"] = "implicit reward relative to the base model" if relative else "raw log-probability margin"
    return out


def reference_pairs(lab: Lab) -> list:
    """The base model's log-probabilities of each pair, with the plain template (computed once)."""
    if lab.ref_pairs is None:
        tmpl = lab.answerer().template(lab.task.base_template)
        prompts = [tmpl.render(q, h) for h, q in map(lm.history_and_question, lab.task.items)]
        lab.ref_pairs = lm.pair_logps(lab.model, prompts, lab.task.items, None)
    return lab.ref_pairs


def serve(lab: Lab, row: dict, answerer: LabAnswerer, **kw) -> None:
    """Evaluate into `row`, with the answering phase's peak memory."""
    with lm.PeakMemory(lab.model.device, children=False) as mem:
        row.update(evaluate(lab, answerer, **kw))
    row["peak_mem_mb"] = mem.peak_mb


def warm(model):
    """Ready a freshly loaded model for fair timing: weights in ordinary memory (lm.pin_weights), and one short
    generation, whose one-off costs (thread pools, allocator growth) would otherwise be charged to whichever
    technique uses the model first."""
    lm.pin_weights(model.model)
    model.chat([{"role": "user", "content": "Hello"}], max_new_tokens=4, adapter=None)
    return model


# ---------------------------------------------------------------------------------------------- techniques
def run_base(lab: Lab, row: dict) -> None:
    serve(lab, row, lab.answerer(), template=lab.task.base_template, rag="off", adapter=None)
    row["note"] = f"template `{lab.task.base_template}`, no retrieval, no training."


def run_prompt(lab: Lab, row: dict) -> None:
    import yaml

    tmpl = lab.task.prompt_template
    path = lab.work / "prompt" / f"{tmpl.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": tmpl.name, "description": tmpl.description, "system": tmpl.system,
                                    "user": tmpl.user}, sort_keys=False, allow_unicode=True), encoding="utf-8")
    serve(lab, row, lab.answerer(), template=tmpl.name, rag="off", adapter=None)
    row.update(disk_mb=lm.disk_mb(path), artifact=str(path), template=tmpl.name,
               note=f"template `{tmpl.name}` (system: “{tmpl.system[:160]}”), same weights, no retrieval.")


def run_rag(lab: Lab, row: dict) -> None:
    from agent.retrieval import KnowledgeBase

    folder = lab.work / "rag"
    shutil.rmtree(folder, ignore_errors=True)
    kb_settings = dataclasses.replace(lab.settings, data_dir=folder, chroma_url="")
    elapsed = lm.time_it()
    with lm.PeakMemory(lab.model.device) as mem:
        kb = KnowledgeBase.from_settings(kb_settings, collection="lab")
        for n, (name, text) in enumerate(lab.task.documents):
            kb.add_text(text, name)
            lab.progress(0.5 * (n + 1) / len(lab.task.documents),
                         f"indexing {n + 1}/{len(lab.task.documents)} documents")
    row.update(train_s=elapsed(), train_peak_mb=mem.peak_mb)
    serve(lab, row, lab.answerer(kb=kb), template="grounded", rag="on", adapter=None)
    row.update(disk_mb=lm.disk_mb(folder), artifact=str(folder), documents=len(lab.task.documents),
               template="grounded",
               note=f"{len(lab.task.documents)} documents indexed (Chroma + BM25, hybrid), top-4 chunks in the "
                    "`grounded` template, same weights.")


def lab_recipe(method: str, budget: Budget):
    """The method's packaged recipe (its learning rate, LoRA shape, beta...) held to the lab's equal budget: the
    same steps, batch size and max length for every method, no gradient accumulation, no packing (a packed SFT
    step would see many more examples than a DPO step)."""
    from adapters.train import recipe_for

    extra = {"packing": False} if method in ("sft", "full") else {}
    return recipe_for(method, steps=budget.steps, batch_size=budget.batch_size, max_length=budget.max_length,
                      grad_accum=1, **extra)


def train_method(lab: Lab, method: str) -> dict:
    """Train `method` on the task's first `lab.examples` rows with the lab's budget, in a child process
    (`adapters.train.run_training`: the lab's own memory stays clean and every method is measured alike), or in
    this process when `lab.isolate` is off (quicker: the training libraries are imported once; the first method's
    peak memory then includes those imports). Returns the training summary plus `wall_s` and `peak_mb`."""
    from adapters import train as trainer

    kind = DATA_KIND[method]
    data_dir, out_dir = lab.work / method / "data", lab.work / method / "out"
    shutil.rmtree(lab.work / method, ignore_errors=True)
    data_dir.mkdir(parents=True)
    rows = lab.task.train[kind][: lab.examples]
    (data_dir / f"{kind}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
    recipe = lab_recipe(method, lab.budget)

    def progress(event: dict):
        if event.get("event") == "step" and event.get("max_steps"):
            lab.progress(0.6 * event["step"] / event["max_steps"], f"training step {event['step']}/{event['max_steps']}")

    elapsed = lm.time_it()
    with lm.PeakMemory(lab.model.device) as mem:
        if lab.isolate:
            summary = trainer.run_training(method, data_dir, out_dir, lab.settings, recipe=recipe, progress=progress)
        else:
            summary = trainer.train(method, data_dir, out_dir, lab.settings, recipe=recipe, progress=progress)
    return {**summary, "wall_s": elapsed(), "peak_mb": mem.peak_mb, "folder": summary.get("folder") or str(out_dir)}


def _training_row(lab: Lab, row: dict, t: dict) -> None:
    row.update(train_s=t.get("seconds"), train_wall_s=t["wall_s"], train_peak_mb=t["peak_mb"],
               trainable_params=t.get("trainable_params"), recipe=t.get("recipe"), artifact=t["folder"],
               disk_mb=lm.disk_mb(t["folder"]), train_examples=t.get("rows"), train_steps=t.get("steps"),
               train_loss={"first": t.get("first_loss"), "final": t.get("final_loss")},
               train_tokens_per_s=t.get("tokens_per_s"),
               train_rewards={k.split("/")[1]: t[k] for k in ("rewards/accuracies", "rewards/margins") if k in t})


def run_lora(lab: Lab, row: dict, method: str) -> None:
    t = train_method(lab, method)
    _training_row(lab, row, t)
    if not row["trainable_params"]:
        row["trainable_params"] = sum(lm.safetensors_params(t["folder"]).values())
    name = f"lab-{method}"
    lab.model.add_adapter(name, t["folder"])
    try:
        lab.progress(0.65, "evaluating")
        serve(lab, row, lab.answerer(), template=lab.task.base_template, rag="off", adapter=name, relative=True)
    finally:
        lab.model.remove_adapter(name)
    row["note"] = (f"LoRA adapter trained on {row['train_examples']} {DATA_KIND[method].upper()} rows, "
                   f"{row['train_steps']} steps; answers with template `{lab.task.base_template}`.")


def run_full(lab: Lab, row: dict, keep: bool) -> None:
    from agent.model import ChatModel

    t = train_method(lab, "full")
    _training_row(lab, row, t)
    full = warm(ChatModel.from_settings(dataclasses.replace(lab.settings, base_model=str(t["folder"]))))
    try:
        changed, tensors = lm.changed_tensors(lab.model.model, full.model)
        row.update(changed_tensors=changed, tensors=tensors, loaded_params=lm.model_params(full.model))
        lab.progress(0.65, "evaluating")
        serve(lab, row, lab.answerer(model=full), template=lab.task.base_template, rag="off", adapter=None,
              relative=True)
    finally:
        del full
        if not keep:  # the whole model is large; its size is measured above
            for f in Path(t["folder"]).glob("*.safetensors"):
                f.unlink()
            row["artifact_removed"] = True
    row["note"] = (f"all weights trained on {row['train_examples']} SFT rows, {row['train_steps']} steps; "
                   f"{changed}/{tensors} weight tensors changed.")


# ---------------------------------------------------------------------------------------------- the run
def run_lab(settings: Settings, task: str = "squad", techniques=TECHNIQUES, budget: Budget = Budget(),
            limit: int = 30, out_dir: str | Path | None = None, data_root: str | Path | None = None,
            keep: bool = False, progress: Progress | None = None, max_new_tokens: int | None = None,
            isolate: bool = True) -> dict:
    """Run the lab and write its report into `out_dir` (default <data_dir>/lab/<task>-<time>). Returns the result
    dict (what report.json holds) with "files": name -> path. A technique that fails gets an error row; the
    others still run."""
    from agent.model import ChatModel

    techniques = parse_techniques(techniques)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")
    if limit < 1:
        raise ValueError("--limit must be at least 1")
    out = Path(out_dir) if out_dir else Path(settings.data_dir) / "lab" / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    say = progress or (lambda f, m: None)
    started, elapsed = time.strftime("%Y-%m-%dT%H:%M:%S"), lm.time_it()
    say(0.0, f"loading task {task}")
    the_task = load_task(task, limit, data_root)
    if max_new_tokens:
        the_task.max_new_tokens = int(max_new_tokens)
    examples = training_examples(the_task, [t for t in techniques if t in TRAINED], budget)
    work = out / "work"  # created only once the inputs are known to be good
    work.mkdir(parents=True, exist_ok=True)
    say(0.0, "loading the base model")
    model = warm(ChatModel.from_settings(settings))
    lab = Lab(settings, the_task, model, budget, examples, work, say, isolate)
    base_params = lm.model_params(model.model)
    rows = []
    high = [0.0]  # the progress shown never goes back (a technique's phases report their own fractions)
    for i, tech in enumerate(techniques):
        row = {"technique": tech, "label": LABELS[tech], "status": "ok", "trainable_params": 0,
               "total_params": base_params, "train_s": 0.0, "train_peak_mb": 0.0, "disk_mb": 0.0}

        def step(f, m, i=i, tech=tech):
            high[0] = max(high[0], (i + max(0.0, min(1.0, f))) / len(techniques))
            say(high[0], f"{LABELS[tech]}: {m}")

        lab.progress = step
        step(0.0, "starting")
        t0 = lm.time_it()
        try:
            if tech == "base":
                run_base(lab, row)
            elif tech == "prompt":
                run_prompt(lab, row)
            elif tech == "rag":
                run_rag(lab, row)
            elif tech == "full":
                run_full(lab, row, keep)
            else:
                run_lora(lab, row, tech)
        except Exception as e:  # one failed technique must not lose the others' results
            row.update(status="error", error=f"{type(e).__name__}: {e}")
        row["seconds"] = t0()
        m = row.get("metrics") or {}
        row["quality"] = m.get(the_task.primary) if row["status"] == "ok" else None
        rows.append(row)
        if len(rows) < len(techniques):  # a report of the finished techniques: a stopped run keeps them
            write_report(lab_result(settings, model, the_task, budget, examples, isolate, techniques, rows,
                                    started, elapsed()), out)
        step(1.0, "done" if row["status"] == "ok" else f"failed: {row.get('error')}")
    result = lab_result(settings, model, the_task, budget, examples, isolate, techniques, rows, started, elapsed())
    files = write_report(result, out)
    result["files"] = {k: str(v) for k, v in files.items()}
    return result


def lab_result(settings, model, the_task, budget, examples, isolate, techniques, rows, started, seconds) -> dict:
    """What report.json holds; `complete` is False while techniques are still to run."""
    return {
        "created": started, "seconds": seconds, "model": str(settings.base_model), "device": model.device,
        "dtype": str(getattr(model.model, "dtype", "")), "max_new_tokens": the_task.max_new_tokens,
        "training_process": "child" if isolate else "in-process",
        "task": {"name": the_task.name, "title": the_task.title, "kind": the_task.kind, "items": len(the_task.items),
                 "primary": the_task.primary, "metrics": list(the_task.metrics),
                 "train_rows": {k: len(v) for k, v in the_task.train.items()},
                 "documents": len(the_task.documents), "info": the_task.info},
        "budget": {**dataclasses.asdict(budget), "examples": examples, "packing": False,
                   "lr_note": "per method recipe (see each row's recipe)",
                   "lr": {r["technique"]: (r.get("recipe") or {}).get("lr") for r in rows if r.get("recipe")}},
        "techniques": techniques, "rows": list(rows), "complete": len(rows) == len(techniques),
    }


# ---------------------------------------------------------------------------------------------- CLI
def _cmd_lab(args) -> int:
    settings = Settings.from_env()
    budget = Budget(steps=args.budget_steps, batch_size=args.batch_size, max_length=args.max_length,
                    examples=args.examples)

    def progress(f, message):
        print(f"[{100 * f:5.1f}%] {message}", file=sys.stderr, flush=True)

    result = run_lab(settings, args.task, args.techniques, budget, args.limit, args.out, args.data, args.keep,
                     progress, args.max_new_tokens, isolate=not args.in_process)
    print((Path(result["files"]["report.md"])).read_text(encoding="utf-8"))
    print(f"report: {Path(result['files']['report.md']).parent}", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in result["rows"]) else 1


def register(sub) -> None:
    p = sub.add_parser("lab", help="compare prompt engineering, RAG, SFT/DPO/KTO LoRA and full fine-tuning "
                                   "on one task, side by side")
    p.add_argument("--task", choices=TASKS, default="squad", help="built-in evaluation task")
    p.add_argument("--techniques", default=",".join(TECHNIQUES), help="comma-separated: " + ",".join(TECHNIQUES))
    p.add_argument("--budget-steps", type=int, default=40, help="optimizer steps of every trained technique")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=256, help="training max length (tokens)")
    p.add_argument("--examples", type=int, default=None, help="training rows (default steps x batch size)")
    p.add_argument("--limit", type=int, default=30, help="evaluation items")
    p.add_argument("--out", default=None, help="report folder (default <data_dir>/lab/<task>-<time>)")
    p.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length (default: the task's)")
    p.add_argument("--in-process", action="store_true",
                   help="train in this process (quicker; training peak memory then less comparable)")
    p.add_argument("--keep", action="store_true", help="keep the full fine-tune's weights (hundreds of MB)")
    p.set_defaults(func=_cmd_lab)
