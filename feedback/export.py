"""Writing datasets to disk, and `kaizen feedback export`.

Two layouts, both read as they are:
- `trl` (default): the rows of `feedback.datasets` -- TRL's conversational `messages` / `prompt, chosen, rejected` /
  `prompt, completion, label`. `datasets.load_dataset("json", data_files=...)` then SFTTrainer / DPOTrainer /
  KTOTrainer. The extra `source` column is dropped by TRL (`remove_unused_columns`).
- `llamafactory`: LLaMA-Factory's sharegpt layout (DPO `chosen`/`rejected` are single message objects, KTO is one
  `messages` list ending with the answer plus a `label` bool) and a `dataset_info.json` naming the columns, so
  `dataset_dir=<out>` and `dataset=kaizen_sft` (or `kaizen_dpo`, `kaizen_kto`) work without edits.

Every file is written to a temporary name and renamed into place; `manifest.json` last.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from agent.files import atomic_write, now_iso
from feedback.datasets import FILE_NAMES, build_datasets, jsonl_bytes

TARGETS = ("trl", "llamafactory")
_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
         "system_tag": "system"}


def to_llamafactory(name: str, rows: list[dict]) -> list[dict]:
    """TRL rows -> LLaMA-Factory sharegpt rows (same `source`)."""
    kind = name.split("_")[0]
    if kind == "sft":
        return [dict(r) for r in rows]
    if kind == "dpo":
        return [{"messages": r["prompt"], "chosen": r["chosen"][0], "rejected": r["rejected"][0],
                 "source": r["source"]} for r in rows]
    if kind == "kto":
        return [{"messages": r["prompt"] + r["completion"], "label": r["label"], "source": r["source"]}
                for r in rows]
    raise ValueError(f"unknown dataset {name!r}")


def dataset_info(names: list[str]) -> dict:
    """LLaMA-Factory `dataset_info.json` entries for the written files."""
    info = {}
    for name in names:
        kind = name.split("_")[0]
        entry = {"file_name": name + ".jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
                 "tags": dict(_TAGS)}
        if kind == "dpo":
            entry["ranking"] = True
            entry["columns"].update(chosen="chosen", rejected="rejected")
        elif kind == "kto":
            entry["columns"]["kto_tag"] = "label"
        info["kaizen_" + name] = entry
    return info


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def write_datasets(out_dir: str | Path, files: dict[str, list[dict]], manifest: dict, *,
                   target: str = "trl") -> dict[str, Path]:
    """Write `<name>.jsonl` for each entry of files (names from FILE_NAMES), then `manifest.json` whose `files`
    section holds the rows and sha256 of exactly the bytes written. Byte-identical for the same input.
    Returns {name: path} including "manifest" (and "dataset_info" for the llamafactory target)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    unknown = sorted(set(files) - set(FILE_NAMES))
    if unknown:
        raise ValueError(f"unknown dataset file(s) {unknown}; expected some of {list(FILE_NAMES)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in FILE_NAMES if n in files]
    paths, written = {}, {}
    for name in names:
        rows = files[name] if target == "trl" else to_llamafactory(name, files[name])
        data = jsonl_bytes(rows)
        paths[name] = out / f"{name}.jsonl"
        atomic_write(paths[name], data)
        written[name + ".jsonl"] = {"rows": len(rows), "sha256": hashlib.sha256(data).hexdigest()}
    if target == "llamafactory":
        paths["dataset_info"] = out / "dataset_info.json"
        atomic_write(paths["dataset_info"], _json_bytes(dataset_info(names)))
    paths["manifest"] = out / "manifest.json"
    atomic_write(paths["manifest"], _json_bytes({**manifest, "files": written, "target": target}))
    return paths


# ---------------------------------------------------------------------------------------------- one user's record
MESSAGE_FIELDS = ("id", "conversation_id", "parent_id", "role", "content", "template", "model", "adapter", "sources",
                  "latency_ms", "prompt_tokens", "completion_tokens", "created", "rating", "edited")
EXPORT_MAX_AGE_S = 3600  # a downloaded export's temporary copy is removed at a later export after this long


def _event_row(e: dict) -> dict:
    common = {"id": e["id"], "created": e["created"], "superseded": e["superseded"]}
    if e["kind"] == "rating":  # value 0: the thumb was taken back
        return {"type": "rating", "message_id": e["message_id"], "value": e["value"], "reasons": e["reasons"],
                "comment": e["comment"], **common}
    if e["kind"] == "edit":
        return {"type": "edit", "message_id": e["message_id"], "original": e["answer"], "edited": e["edited"],
                **common}
    return {"type": "pick", "prompt_message_id": e["parent_id"], "candidate_ids": e["candidate_ids"],
            "picked_id": e["picked_id"], **common}


def user_export_rows(store, user_id: int) -> list[dict]:
    """Everything `user_id` wrote, as JSONL rows: a header ("export": user, time, counts), their conversations
    (oldest first) each followed by its messages (answers with the latest rating and edit), then every rating
    (reasons, comment; value 0 = taken back), edit and pick they made, oldest first. Read through the store's own
    per-user readers (`conversations`, `conversation`) and its training events kept to this user's own
    conversations: never another user's row."""

    user = store.user(user_id)
    rows, own = [], set()
    for c in reversed(store.conversations(user_id)):
        own.add(c["id"])
        rows.append({"type": "conversation", "id": c["id"], "title": c["title"], "created": c["created"]})
        rows += [{"type": "message", **{k: m.get(k) for k in MESSAGE_FIELDS}}
                 for m in store.conversation(c["id"], user_id)]
    rows += [_event_row(e) for e in store.training_events()
             if e["user_id"] == user_id and e["conversation_id"] in own]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["type"]] = counts.get(r["type"], 0) + 1
    return [{"type": "export", "user": user["name"], "exported": now_iso(), "counts": counts}] + rows


def write_user_export(store, user_id: int, folder: str | Path) -> tuple[Path, int]:
    """Write `user_export_rows` to <folder>/<fresh dir>/kaizen-feedback-<user>-<time>.jsonl (a folder of its own:
    two users' exports never share a path); exports older than EXPORT_MAX_AGE_S are removed first.
    Returns (path, rows without the header)."""
    import re
    import shutil
    import tempfile
    import time

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("export-*"):
        if old.is_dir() and time.time() - old.stat().st_mtime > EXPORT_MAX_AGE_S:
            shutil.rmtree(old, ignore_errors=True)
    rows = user_export_rows(store, user_id)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", rows[0]["user"])[:40].strip("._") or "user"
    path = Path(tempfile.mkdtemp(prefix="export-", dir=root)) / \
        f"kaizen-feedback-{name}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    atomic_write(path, jsonl_bytes(rows))
    return path, len(rows) - 1


# ---------------------------------------------------------------------------------------------- CLI
def _cmd_export(args) -> int:
    from agent.settings import Settings
    from feedback.store import Store

    settings = Settings.from_env()
    if not Path(settings.db_path).exists():
        raise FileNotFoundError(f"no feedback database at {settings.db_path} (set KAIZEN_DATA_DIR)")
    events = Store(settings.db_path).training_events()
    overrides = {"include_flagged": args.include_flagged}
    if args.per_user_cap is not None:
        overrides["per_user_cap"] = args.per_user_cap
    if args.max_user_share is not None:
        overrides["max_user_share"] = args.max_user_share if args.max_user_share > 0 else None
    system, templates = None, None
    if args.system:
        system = args.system
    elif not args.no_system:  # each prompt as the app sent it (its answer's template, else the app's default)
        from agent.templates import training_prompts

        system, templates = training_prompts(settings.template, settings.templates_dir)
    files, manifest = build_datasets(events, eval_fraction=args.eval_fraction, system=system, templates=templates,
                                     **overrides)
    kinds = ["sft", "dpo", "kto"] if args.format == "all" else [args.format]
    names = kinds + ([k + "_eval" for k in kinds] if args.include_eval else [])
    paths = write_datasets(args.out, {n: files[n] for n in names}, manifest, target=args.target)
    for name in [n for n in FILE_NAMES if n in names]:
        print(f"{paths[name]}\t{len(files[name])} rows")
    ev = manifest["events"]
    print(f"{paths['manifest']}\t{ev['total']} events, {ev['used']} used, {ev['opted_out']} opted out, "
          f"{ev['flagged']} flagged" + ("" if args.include_flagged else " (left out)"))
    return 0


def register(fsub) -> None:
    """Add `export` to the `kaizen feedback` sub-parsers."""
    p = fsub.add_parser("export", help="write SFT / DPO / KTO JSONL datasets built from the feedback",
                        description="Build curated datasets from the feedback store and write JSONL that TRL "
                                    "(--target trl) or LLaMA-Factory (--target llamafactory) reads as it is, "
                                    "plus manifest.json. Without --include-eval only the training split is written.")
    p.add_argument("--format", choices=["sft", "dpo", "kto", "all"], default="all")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--include-eval", action="store_true", help="also write the held-out *_eval.jsonl files")
    p.add_argument("--include-flagged", action="store_true", help="keep rows built from suspicious edits")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="share of prompts held out (default 0.1)")
    sys_group = p.add_mutually_exclusive_group()
    sys_group.add_argument("--system", help="system message put first in every prompt, as it is (default: each "
                                            "prompt as the app sent it, as the loop trains: the template its "
                                            "answer was generated with, else the app's, KAIZEN_TEMPLATE)")
    sys_group.add_argument("--no-system", action="store_true", help="no system message in the rows")
    p.add_argument("--target", choices=list(TARGETS), default="trl", help="file layout (default trl)")
    p.add_argument("--per-user-cap", type=int, default=None, help="at most N rows of one user per file")
    p.add_argument("--max-user-share", type=float, default=None,
                   help="no user above this share of a file (default 0.5; 0 = off)")
    p.set_defaults(func=_cmd_export)
