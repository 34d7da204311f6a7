"""Built-in tasks of the techniques lab (data preparation and quality metrics; no model here).

A task is an evaluation set plus what each technique needs to run on it:

- `items`: what is measured. `kind="generate"` items have a `question` (and gold `answers` for QA); the answer the
  technique generates is scored by `score_answer`. `kind="preference"` items have `prompt`, `chosen`, `rejected`
  (TRL conversational format); they are scored by the model's log-probabilities (lab.run).
- `train`: TRL rows `{"sft", "dpo", "kto"}` for the training techniques (the lab takes the same number of them for
  every method: equal budgets). The eval items are never among them.
- `documents`: (name, text) pairs the RAG technique indexes.
- `prompt_template`: the prompt-engineering technique: a better template, nothing else.

Tasks: `squad` (document QA on SQuAD 2.0 paragraphs; RAG should win), `style` (a house style learned from users'
edits, replayed through the feedback store; SFT/DPO should win), `oasst` (real human preference pairs from
OpenAssistant, replayed through the feedback store; preference accuracy).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from adapters.scoring import HOUSE_PHRASE, contains_gold, follows_style, house_style, normalize_answer, token_f1  # noqa: F401
from agent.templates import Template, parse

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TASKS = ("squad", "style", "oasst")
TASK_METRICS = {"squad": ("contains", "f1"), "style": ("style", "phrase_anywhere"),  # each task's metrics, headline first
                "oasst": ("pref_acc", "pref_acc_raw")}


@dataclass
class LabTask:
    name: str
    title: str
    kind: str  # "generate" | "preference"
    primary: str  # the headline metric key (a share, 0..1)
    metrics: tuple[str, ...]
    items: list[dict]
    train: dict[str, list[dict]]
    documents: list[tuple[str, str]]
    prompt_template: Template
    base_template: str = "plain"
    max_new_tokens: int = 48
    info: dict = field(default_factory=dict)


class TaskDataError(FileNotFoundError):
    """The task's data is not where it should be."""


def _need(path: Path) -> Path:
    if not path.exists():
        raise TaskDataError(f"{path} not found: the lab's built-in tasks read ../shared/data beside the repo "
                            "(pass --data DIR to point elsewhere)")
    return path


# ---------------------------------------------------------------------------------------------- metrics (pure)
def score_answer(task: LabTask, item: dict, answer: str) -> dict[str, float]:
    """Per-item quality of a generated answer, as metric -> value in [0, 1]."""
    if task.name == "squad":
        return {"contains": float(contains_gold(answer, item["answers"])),
                "f1": max(token_f1(answer, g) for g in item["answers"])}
    if task.name == "style":
        return {"style": float(follows_style(answer)),
                "phrase_anywhere": float(HOUSE_PHRASE.lower().rstrip(":") in (answer or "").lower())}
    raise ValueError(f"task {task.name!r} is not scored on generated answers")


def unpair(dpo_rows: list[dict]) -> list[dict]:
    """KTO rows from preference pairs: each chosen answer desirable, each rejected undesirable (interleaved)."""
    out = []
    for r in dpo_rows:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------------------- (a) SQuAD QA
SQUAD_PROMPT = parse("""
name: lab-squad-prompt
description: Prompt engineering for short factual answers.
system: >-
  You are Kaizen, a precise question-answering assistant. Reply with the exact answer only: a name, number, date or
  short phrase of at most a few words. No explanation, no full sentence.
user: "Question: {question}\\nShort answer:"
""")


def squad_paragraphs(dev: dict) -> list[dict]:
    """Paragraphs with at least two answerable questions, articles interleaved (round robin) for variety."""
    per_article = []
    for a_i, art in enumerate(dev["data"]):
        paras = []
        for p_i, p in enumerate(art["paragraphs"]):
            qas = [q for q in p["qas"] if not q.get("is_impossible") and q.get("answers")]
            if len(qas) >= 2:
                paras.append({"name": f"{art['title']} #{p_i}", "context": p["context"], "qas": qas})
        per_article.append(paras)
    out, depth = [], max((len(p) for p in per_article), default=0)
    for i in range(depth):
        out += [paras[i] for paras in per_article if i < len(paras)]
    return out


def golds(qa: dict) -> list[str]:
    return list(dict.fromkeys(a["text"].strip() for a in qa["answers"] if a["text"].strip()))


def build_squad(dev: dict, test: dict | None, limit: int, distractors: int | None = None) -> LabTask:
    """Eval: the first answerable question of each of `limit` paragraphs. Train: the paragraphs' other questions
    (closed-book Q -> gold answer; DPO/KTO rejected = the answer to another question about the same paragraph).
    Documents: the paragraphs plus `distractors` (default 2 x limit) paragraphs of the test file."""
    paras = squad_paragraphs(dev)[:limit]
    items, sft, dpo = [], [], []
    for p in paras:
        first, rest = p["qas"][0], p["qas"][1:]
        items.append({"id": first["id"], "question": first["question"].strip(), "answers": golds(first),
                      "doc": p["name"]})
        for j, qa in enumerate(rest):
            answer = golds(qa)[0]
            others = [golds(o)[0] for o in p["qas"] if o is not qa
                      and normalize_answer(golds(o)[0]) != normalize_answer(answer)]
            sft.append({"messages": _user(qa["question"].strip()) + _assistant(answer)})
            if others:
                dpo.append({"prompt": _user(qa["question"].strip()), "chosen": _assistant(answer),
                            "rejected": _assistant(others[j % len(others)])})
    docs = [(p["name"], p["context"]) for p in paras]
    n_dis = 2 * limit if distractors is None else distractors
    if test is not None and n_dis:
        extra = [(f"{art['title']} #{i}", p["context"]) for art in test["data"] for i, p in enumerate(art["paragraphs"])]
        docs += extra[:n_dis]
    return LabTask("squad", "Document QA (SQuAD 2.0 paragraphs)", "generate", "contains", TASK_METRICS["squad"],
                   items, {"sft": sft, "dpo": dpo, "kto": unpair(dpo)}, docs, SQUAD_PROMPT, max_new_tokens=48,
                   info={"paragraphs": len(paras), "documents": len(docs)})


def load_squad(limit: int, data_root: Path = SHARED_DATA) -> LabTask:
    dev = json.loads(_need(Path(data_root) / "squad2" / "dev-v2.0.json").read_text(encoding="utf-8"))
    test_path = Path(data_root) / "squad2" / "test-v2.0.json"
    test = json.loads(test_path.read_text(encoding="utf-8")) if test_path.exists() else None
    return build_squad(dev, test, limit)


# ---------------------------------------------------------------------------------------------- (b) house style
STYLE_PROMPT = parse(f"""
name: lab-style-prompt
description: Prompt engineering for the house style (the style written down as an instruction).
system: >-
  You are Kaizen, a helpful AI assistant. House style, always: begin every answer with the exact words
  "{HOUSE_PHRASE}" and then answer in one or two short sentences.
user: "{{question}}"
""")


def oasst_first_turns(trees: list[dict]) -> list[tuple[str, str]]:
    """(prompt, best reply) of each tree's opening turn: the rank-0 reply, else the first one."""
    out = []
    for t in trees:
        replies = [r for r in t["prompt"].get("replies") or [] if not r.get("deleted") and r.get("text")]
        if not replies:
            continue
        best = min(replies, key=lambda r: r["rank"] if isinstance(r.get("rank"), int) else 99)
        out.append((t["prompt"]["text"].strip(), best["text"].strip()))
    return out


def style_events(store, pairs: list[tuple[str, str]], editors: int = 4, edit=house_style) -> int:
    """Replay the style scenario through the store's API: users ask, the assistant answers (the original oasst
    reply), and the user edits the answer into the house style (`edit(answer)`). An answer already in the style
    is left as it is (the store refuses an edit that changes nothing). Returns the number of edits."""
    users = [store.ensure_user(f"editor-{i}") for i in range(editors)]
    n = 0
    for i, (prompt, answer) in enumerate(pairs):
        uid = users[i % editors]
        conv = store.new_conversation(uid, title=prompt[:80])
        store.add_message(conv, "user", prompt, user_id=uid)
        mid = store.add_message(conv, "assistant", answer, user_id=uid, model="oasst")
        edited = edit(answer)
        if " ".join(edited.split()) == " ".join(answer.split()):
            continue
        store.edit(mid, uid, edited)
        n += 1
    return n


def plain_system() -> str | None:
    """The trained techniques answer through the plain template, so their rows carry its system prompt (as the
    app's loop does with its serving template)."""
    from agent.templates import serving_system

    return serving_system("plain")


def build_style(train_pairs: list[tuple[str, str]], eval_prompts: list[str], limit: int,
                work_dir: Path | None = None) -> LabTask:
    """Train rows from a real feedback store (edits -> SFT gold, DPO edited-over-original; KTO unpaired from the
    DPO pairs, since an edit gives no KTO row). Eval: `limit` prompts never seen in training."""
    from feedback.datasets import build_datasets
    from feedback.store import Store

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        store = Store(Path(tmp) / "style.db")
        try:
            edits = style_events(store, train_pairs)
            files, manifest = build_datasets(store.training_events(), eval_fraction=0.0, system=plain_system())
        finally:
            store.close()
    seen = {normalize_answer(p) for p, _ in train_pairs}
    prompts = [p for p in dict.fromkeys(x.strip() for x in eval_prompts if x.strip()) if normalize_answer(p) not in seen]
    items = [{"id": f"style-{i}", "question": p} for i, p in enumerate(prompts[:limit])]
    docs = [(f"house-style example {i}", f"Question: {r['messages'][-2]['content']}\nAnswer: {r['messages'][-1]['content']}")
            for i, r in enumerate(files["sft"])]
    return LabTask("style", "House style learned from edits", "generate", "style", TASK_METRICS["style"],
                   items, {"sft": files["sft"], "dpo": files["dpo"], "kto": unpair(files["dpo"])}, docs,
                   STYLE_PROMPT, max_new_tokens=40,
                   info={"edits": edits, "phrase": HOUSE_PHRASE, "dataset_stages": manifest.get("stages", {})})


def load_style(limit: int, data_root: Path = SHARED_DATA, work_dir: Path | None = None) -> LabTask:
    from feedback.replay import read_trees

    trees = read_trees(_need(Path(data_root) / "oasst_en_100" / "en_100_tree.jsonl"))
    lottery = _need(Path(data_root) / "oasst_en_100" / "prompt_lottery_en_250_text.jsonl")
    prompts = [json.loads(line) for line in lottery.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = [p if isinstance(p, str) else str(p.get("text", "")) for p in prompts]
    return build_style(oasst_first_turns(trees), prompts, limit, work_dir)


# ---------------------------------------------------------------------------------------------- (c) oasst preference
OASST_PROMPT = parse("""
name: lab-oasst-prompt
description: Prompt engineering for preferred answers (what raters reward, written down).
system: >-
  You are Kaizen, a knowledgeable and helpful assistant. Give accurate, specific and complete answers, well
  organised, in a friendly and respectful tone; admit uncertainty instead of guessing.
user: "{question}"
""")


def build_oasst(files: dict[str, list[dict]], limit: int, info: dict | None = None) -> LabTask:
    """Eval: the first `limit` held-out DPO pairs (held out by prompt, see feedback.datasets.split_rows).
    Train: the train files. Documents: the train SFT answers (question + answer) for RAG."""
    items = [{"id": f"oasst-{i}", "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
              "question": next((m["content"] for m in reversed(r["prompt"]) if m["role"] == "user"), "")}
             for i, r in enumerate(files["dpo_eval"][:limit])]
    docs = [(f"oasst answer {i}", f"Question: {r['messages'][-2]['content']}\nAnswer: {r['messages'][-1]['content']}")
            for i, r in enumerate(files["sft"]) if len(r["messages"]) >= 2]
    return LabTask("oasst", "Human preference (OpenAssistant pairs)", "preference", "pref_acc",
                   TASK_METRICS["oasst"], items, {k: files[k] for k in ("sft", "dpo", "kto")}, docs,
                   OASST_PROMPT, max_new_tokens=32, info=info or {})


def load_oasst(limit: int, data_root: Path = SHARED_DATA, work_dir: Path | None = None,
               eval_fraction: float = 0.25) -> LabTask:
    """The 100 oasst trees replayed as feedback events through a real (temporary) store, then feedback.datasets."""
    from feedback.datasets import build_datasets
    from feedback.replay import replay_oasst
    from feedback.store import Store

    path = _need(Path(data_root) / "oasst_en_100" / "en_100_tree.jsonl")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        store = Store(Path(tmp) / "oasst.db")
        try:
            counts = replay_oasst(store, path)
            files, manifest = build_datasets(store.training_events(), eval_fraction=eval_fraction,
                                             system=plain_system())
        finally:
            store.close()
    return build_oasst(files, limit, {"replay": counts, "eval_fraction": eval_fraction,
                                      "dataset_stages": manifest.get("stages", {})})


def load_task(name: str, limit: int, data_root: Path | str | None = None, work_dir: Path | None = None) -> LabTask:
    """A built-in task by name, with `limit` evaluation items."""
    if limit < 1:
        raise ValueError("--limit must be at least 1")
    root = Path(data_root) if data_root else SHARED_DATA
    if name == "squad":
        return load_squad(limit, root)
    if name == "style":
        return load_style(limit, root, work_dir)
    if name == "oasst":
        return load_oasst(limit, root, work_dir)
    raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
