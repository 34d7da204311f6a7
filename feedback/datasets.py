"""Feedback events -> TRL-schema rows (pure functions, no I/O).

Input: event dicts as `feedback.store.Store.training_events()` returns them (kinds "rating", "edit", "choice"; each
with `event_id`, `user_id`, `message_id`, `parent_id`, `prompt` messages, `answer`, ...).

Output rows use TRL's conversational formats, plus a `"source"` list of event ids for provenance. TRL's trainers
drop columns they do not know (`remove_unused_columns`), and `trl.apply_chat_template` only looks at its own keys,
so `source` travels along harmlessly:

- SFT  `{"messages": prompt + [assistant gold], "source": [...]}`
- DPO  `{"prompt": [...], "chosen": [assistant], "rejected": [assistant], "source": [...]}`
- KTO  `{"prompt": [...], "completion": [assistant], "label": bool, "source": [...]}`

Rules (each one a small function below):
- ratings: the latest rating of a user on a message supersedes that user's earlier ones; a latest rating of 0 is a
  retraction (the thumb was un-clicked: that user's vote is gone, counted); a message's verdict is +1 / -1 when all
  its (latest, unretracted) votes agree, a conflict otherwise (left out of SFT/KTO, counted). So 👎 then 👍 is one
  +1, and 👎 then un-click is nothing.
- edits: the latest edit of a user on a message wins; the edit is the gold SFT answer and DPO chosen over the
  original. An edited message gives no thumbs-up SFT row (the edit replaces it) and no KTO row.
- choices: the picked candidate over each other candidate (DPO); a user's latest choice on a prompt wins.
- DPO pairs whose chosen and rejected are the same text after normalization (case, width, whitespace) are dropped
  and counted (`stages.dpo.identical`): e.g. a retry that gave the same answer again.
- siblings: answers to the same `parent_id`, one voted up, one voted down -> DPO (every up x down pair).
- stopped answers (the user pressed Stop): a row that takes one as good (its 👍, or picking it) is dropped and
  counted (`stages.<kind>.stopped_answer`): the text is a fragment. Its edit and its 👎 stay.
- KTO: voted messages that are in no sibling pair and were not edited ("unpaired thumbs").
- private documents: a row built on an answer that drew on its user's own documents (its 👍, 👎, edit, or a pick
  among answers one of which did) is dropped and counted (`stages.<kind>.private_documents`): those documents are
  the user's alone, and an adapter serves everyone; the row would also teach the facts without the documents.
- answers written from retrieved documents (the shared library's) or with a template that takes `{sources}`: the
  row would hold the answer without the reference block it was written from (it is not stored, and at ~1,000
  tokens it would not fit the recipes' 512-token rows), teaching citations of sources that are not there; dropped
  and counted (`stages.<kind>.grounded`). Counted after the private ones (a private answer counts as private).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, fields

from feedback import curate
from feedback.curate import CurateConfig, normalize_text

KINDS = ("rating", "edit", "choice")


# ---------------------------------------------------------------------------------------------- helpers
def event_key(event_id: str) -> tuple[str, int, str]:
    """Natural sort key of an event id like "rating:12" (kind, number); unknown shapes sort by text."""
    kind, _, num = str(event_id).partition(":")
    return (kind, int(num), "") if num.isdigit() else (kind, -1, str(event_id))


def _order(e: dict) -> tuple:
    """Chronological order of events: created, then id (ids grow with time within a kind)."""
    return (str(e.get("created") or ""), event_key(e["event_id"]))


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def clean_prompt(prompt: list[dict]) -> list[dict]:
    """Only role/content, as plain strings (drops any extra keys a store might add)."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def row_sort_key(row: dict) -> tuple:
    """Stable, input-order independent order of rows: by their source events, then content."""
    return (tuple(event_key(s) for s in row["source"]), json.dumps(row, sort_keys=True, ensure_ascii=False))


def _sorted(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=row_sort_key)


def validate_events(events: list[dict]) -> None:
    """Clear error on an event a builder cannot use (fails before anything is built)."""
    need = {"event_id", "kind", "user_id", "message_id", "parent_id", "prompt", "answer"}
    for i, e in enumerate(events):
        missing = need - set(e)
        if missing:
            raise ValueError(f"event #{i} ({e.get('event_id', '?')}): missing fields {sorted(missing)}")
        if e["kind"] not in KINDS:
            raise ValueError(f"event {e['event_id']}: unknown kind {e['kind']!r}")
        extra = {"rating": "value", "edit": "edited", "choice": "chosen"}[e["kind"]]
        if extra not in e:
            raise ValueError(f"event {e['event_id']}: a {e['kind']} event needs {extra!r}")
        if e["kind"] == "rating" and (isinstance(e["value"], bool) or e["value"] not in (1, -1, 0)):
            raise ValueError(f"event {e['event_id']}: rating value must be +1, -1 or 0 (retracted), "
                             f"got {e['value']!r}")
        if not isinstance(e["prompt"], list) or not e["prompt"]:
            raise ValueError(f"event {e['event_id']}: prompt must be a non-empty list of messages")


# ---------------------------------------------------------------------------------------------- supersession
def latest_ratings(events: list[dict]) -> tuple[list[dict], list[str]]:
    """Keep each user's latest rating per message, unless it is a retraction (value 0: the vote is gone).
    Returns (kept ratings in time order, superseded event ids); see `retracted_ratings` for the retractions."""
    kept, superseded = _latest(events, "rating", "message_id")
    return [r for r in kept if r["value"] != 0], superseded


def retracted_ratings(events: list[dict]) -> list[str]:
    """Event ids of the retractions that are a user's latest rating on a message (the thumb is taken back)."""
    return [r["event_id"] for r in _latest(events, "rating", "message_id")[0] if r["value"] == 0]


def latest_edits(events: list[dict]) -> tuple[list[dict], list[str]]:
    """Keep each user's latest edit per message (a later correction replaces an earlier one)."""
    return _latest(events, "edit", "message_id")


def latest_choices(events: list[dict]) -> tuple[list[dict], list[str]]:
    """Keep each user's latest choice per prompt (user message): picking again replaces the earlier pick."""
    return _latest(events, "choice", "parent_id")


def _latest(events: list[dict], kind: str, target: str) -> tuple[list[dict], list[str]]:
    latest: dict[tuple, dict] = {}
    superseded = []
    for e in sorted((e for e in events if e["kind"] == kind), key=_order):
        key = (e["user_id"], e[target])
        if key in latest:
            superseded.append(latest[key]["event_id"])
        latest[key] = e
    return sorted(latest.values(), key=_order), sorted(superseded, key=event_key)


def verdicts(ratings: list[dict]) -> tuple[dict[int, int], dict[int, list[dict]], list[int]]:
    """Per message: +1/-1 when all latest votes agree. Returns (verdict by message, its ratings, conflicting ids)."""
    by_msg: dict[int, list[dict]] = defaultdict(list)
    for r in ratings:
        by_msg[r["message_id"]].append(r)
    verdict, conflicts = {}, []
    for mid, rs in by_msg.items():
        values = {r["value"] for r in rs}
        if len(values) == 1:
            verdict[mid] = values.pop()
        else:
            conflicts.append(mid)
    return verdict, dict(by_msg), sorted(conflicts)


def _ids(events: list[dict]) -> list[str]:
    return sorted({e["event_id"] for e in events}, key=event_key)


# ---------------------------------------------------------------------------------------------- row builders
def sibling_pairs(ratings: list[dict]) -> list[tuple[list[dict], list[dict]]]:
    """(up ratings, down ratings) for every up-voted x down-voted pair of answers to the same parent."""
    verdict, by_msg, _ = verdicts(ratings)
    by_parent: dict[int, list[int]] = defaultdict(list)
    for mid in verdict:
        by_parent[by_msg[mid][0]["parent_id"]].append(mid)
    pairs = []
    for parent in sorted(by_parent):
        mids = sorted(by_parent[parent])
        ups = [m for m in mids if verdict[m] == 1]
        downs = [m for m in mids if verdict[m] == -1]
        pairs += [(by_msg[u], by_msg[d]) for u in ups for d in downs]
    return pairs


def sft_rows(events: list[dict]) -> list[dict]:
    """SFT rows from thumbs-up answers (unanimous, not edited) and from edits (the edit is the gold answer)."""
    ratings, _ = latest_ratings(events)
    edits, _ = latest_edits(events)
    edited = {e["message_id"] for e in edits}
    verdict, by_msg, _ = verdicts(ratings)
    rows = []
    for mid, value in verdict.items():
        if value == 1 and mid not in edited:
            r0 = by_msg[mid][0]
            rows.append({"messages": clean_prompt(r0["prompt"]) + assistant(r0["answer"]),
                         "source": _ids(by_msg[mid])})
    for e in edits:
        if e["edited"].strip():
            rows.append({"messages": clean_prompt(e["prompt"]) + assistant(e["edited"]), "source": [e["event_id"]]})
    return _sorted(rows)


def endorses_stopped(event: dict) -> bool:
    """The event takes as good an answer the user stopped before its end (a 👍 on it, or picking it): that text is
    a fragment, never a gold answer. Edits and 👎 of stopped answers stay (the user's text is the gold; a 👎 is
    true of the fragment)."""
    return bool(event.get("stopped")) and (event["kind"] == "choice"
                                           or (event["kind"] == "rating" and event.get("value") == 1))


def same_answer(row: dict) -> bool:
    """A DPO pair whose two sides are the same text after normalization (case, width, whitespace)."""
    return normalize_text(row["chosen"][0]["content"]) == normalize_text(row["rejected"][0]["content"])


def dpo_pairs(events: list[dict]) -> list[dict]:
    """Every DPO pair the events give, identical sides included: edited over original, picked over each other
    candidate, up-voted over down-voted sibling. `dpo_rows` is these minus `same_answer` pairs."""
    rows = []

    def add(prompt, chosen, rejected, source):
        if chosen.strip() and rejected.strip():
            rows.append({"prompt": clean_prompt(prompt), "chosen": assistant(chosen),
                         "rejected": assistant(rejected), "source": source})

    for e in latest_edits(events)[0]:
        add(e["prompt"], e["edited"], e["answer"], [e["event_id"]])
    for e in latest_choices(events)[0]:
        for other in e.get("rejected") or []:
            add(e["prompt"], e["chosen"], other, [e["event_id"]])
    for ups, downs in sibling_pairs(latest_ratings(events)[0]):
        add(ups[0]["prompt"], ups[0]["seen"], downs[0]["seen"], _ids(ups + downs))  # the texts the votes were on
    return _sorted(rows)


def dpo_rows(events: list[dict]) -> list[dict]:
    """DPO rows: edited over original, picked over each other candidate, up-voted over down-voted sibling.
    Pairs whose two sides are the same text (after normalization) are left out."""
    return [r for r in dpo_pairs(events) if not same_answer(r)]


def kto_rows(events: list[dict]) -> list[dict]:
    """KTO rows from unpaired thumbs: voted answers in no up/down sibling pair and not edited."""
    ratings, _ = latest_ratings(events)
    edited = {e["message_id"] for e in latest_edits(events)[0]}
    verdict, by_msg, _ = verdicts(ratings)
    paired = {rs[0]["message_id"] for pair in sibling_pairs(ratings) for rs in pair}
    rows = []
    for mid, value in verdict.items():
        if mid in paired or mid in edited:
            continue
        r0 = by_msg[mid][0]
        rows.append({"prompt": clean_prompt(r0["prompt"]), "completion": assistant(r0["answer"]),
                     "label": value == 1, "source": _ids(by_msg[mid])})
    return _sorted(rows)


BUILDERS = {"sft": sft_rows, "dpo": dpo_rows, "kto": kto_rows}


def with_system(row: dict, system: str) -> dict:
    """The row with `system` as the first message of its prompt (a row that has a system message keeps it)."""
    key = "messages" if "messages" in row else "prompt"
    if row[key] and row[key][0]["role"] == "system":
        return row
    return {**row, key: [{"role": "system", "content": system}] + row[key]}


def row_templates(row: dict, by_id: dict[str, dict]) -> set:
    """The templates the row's answers were generated with (a choice: every candidate's)."""
    names = set()
    for s in row["source"]:
        e = by_id[s]
        if e["kind"] == "choice" and e.get("candidates"):
            names |= {c.get("template") for c in e["candidates"]}
        else:
            names.add(e.get("template"))
    return names


def needs_sources(row: dict, by_id: dict[str, dict], templates: dict) -> bool:
    """Whether the row's answers were written from a reference block its prompt would not hold: retrieved
    documents (the event's `grounded`), or a template that takes `{sources}` (told "no reference data was found").
    Trained without it, a 👍 on "The night train leaves at 19:20 [1]" teaches citing a source that is not there
    and stating a document's facts from nothing; and the block (~1,000 tokens) would not fit the recipes' 512-token
    rows, which the trainers cut from the end, answer first."""
    if any(by_id[s].get("grounded") for s in row["source"]):
        return True
    return any(n in templates and "sources" in templates[n].variables for n in row_templates(row, by_id))


def as_seen(row: dict, templates: dict, names: set) -> tuple[dict, str | None]:
    """(the row with its prompt as the model saw it, the template's name): rendered with the one template its
    answers were generated with (that template's system message and its wrapping of the last question, e.g. the
    academic template's "Provide a comprehensive, academic-style overview of ..."), when that template takes only
    the question. Else (answers from several templates, a template gone) the row as it is and None.
    `templates`: name -> an object with `variables` and `render(question, history)` (agent.templates.Template)."""
    t = templates.get(next(iter(names))) if len(names) == 1 else None
    prompt = row_prompt(row)
    if t is None or list(t.variables) != ["question"] or not prompt or prompt[-1]["role"] != "user":
        return row, None
    seen = clean_prompt(t.render(prompt[-1]["content"], history=prompt[:-1]))
    if "messages" in row:
        return {**row, "messages": seen + row["messages"][-1:]}, t.name
    return {**row, "prompt": seen}, t.name


def row_prompt(row: dict) -> list[dict]:
    """The prompt messages of any row kind (SFT: everything before the final assistant turn)."""
    return row["prompt"] if "prompt" in row else row["messages"][:-1]


# ---------------------------------------------------------------------------------------------- held-out split
def split_group(row: dict) -> str:
    """The split group of a row: its conversation's opening user message, normalized. Every turn of one thread
    (and every row about the same prompt) therefore lands on the same side, in every file."""
    prompt = row_prompt(row)
    first = next((m["content"] for m in prompt if m["role"] == "user"), prompt[0]["content"] if prompt else "")
    return normalize_text(first)


def split_score(group: str) -> float:
    """Deterministic uniform number in [0, 1) from the group text (sha256, not Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big") / 2**64


def is_eval(row: dict, eval_fraction: float) -> bool:
    return split_score(split_group(row)) < eval_fraction


def split_rows(rows: list[dict], eval_fraction: float = 0.1) -> tuple[list[dict], list[dict]]:
    """(train, eval) by prompt hash. A prompt's side depends only on its text, never on the other rows, so it
    stays on the same side as the data grows."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    train, held = [], []
    for row in rows:
        (held if is_eval(row, eval_fraction) else train).append(row)
    return train, held


# ---------------------------------------------------------------------------------------------- the whole build
FILE_NAMES = ("sft", "sft_eval", "dpo", "dpo_eval", "kto", "kto_eval")
FORMAT = "kaizen-datasets/1"


def jsonl_bytes(rows: list[dict]) -> bytes:
    """The exact bytes of a JSONL file: one JSON object a line, sorted keys, UTF-8, no timestamps."""
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _config(config: CurateConfig | None, overrides: dict) -> CurateConfig:
    known = {f.name for f in fields(CurateConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown dataset option(s) {unknown}; known: {sorted(known)}")
    return CurateConfig(**{**asdict(config or CurateConfig()), **overrides})


def build_datasets(events: list[dict], *, eval_fraction: float = 0.1, config: CurateConfig | None = None,
                   system: str | None = None, templates: dict | None = None,
                   **overrides) -> tuple[dict[str, list[dict]], dict]:
    """Events -> (files, manifest). files: {"sft", "sft_eval", "dpo", "dpo_eval", "kto", "kto_eval"} -> rows.
    Overrides are CurateConfig fields (e.g. `per_user_cap=20, include_flagged=True`). `system`: a system message
    put first in every row's prompt (the serving template's, so that training sees what the app sends; curation
    and the split ignore it). `templates` (name -> Template): a row whose answers were all generated with one of
    them that takes only the question gets its prompt as the model saw it (`as_seen`), its system message
    included; the others get `system`; `stages.<kind>.templates` counts the rows of each. Pure and deterministic:
    the same events, in any order, give the same rows and the same manifest (which holds no timestamp)."""
    cfg = _config(config, overrides)
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    validate_events(events)
    by_id = {}
    for e in events:
        if e["event_id"] in by_id:
            raise ValueError(f"duplicate event id {e['event_id']}")
        by_id[e["event_id"]] = e
    usable = [e for e in events if not e.get("opted_out")]
    ratings, superseded_r = latest_ratings(usable)
    _, superseded_e = latest_edits(usable)
    _, superseded_c = latest_choices(usable)
    flagged = curate.flag_events(usable)

    def when(row):  # time of a row = its latest source event
        return max(_order(by_id[s]) for s in row["source"])

    def owner(row):  # the user of its earliest source event
        return by_id[min(row["source"], key=lambda s: _order(by_id[s]))]["user_id"]

    files, stages, dropped, redactions = {}, {}, {}, {}
    for kind, build in BUILDERS.items():
        rows = dpo_pairs(usable) if kind == "dpo" else build(usable)
        st = {"built": len(rows)}
        drops: dict[str, list] = defaultdict(list)

        def drop(reason, gone):
            st[reason] = len(gone)
            drops[reason] += [s for r in gone for s in r["source"]]

        stopped = [any(endorses_stopped(by_id[s]) for s in r["source"]) for r in rows]
        drop("stopped_answer", [r for r, gone in zip(rows, stopped) if gone])  # a fragment taken as good
        rows = [r for r, gone in zip(rows, stopped) if not gone]
        private = [any(by_id[s].get("private_sources") for s in r["source"]) for r in rows]
        drop("private_documents", [r for r, gone in zip(rows, private) if gone])  # never into a shared adapter
        rows = [r for r, gone in zip(rows, private) if not gone]
        grounded = [needs_sources(r, by_id, templates or {}) for r in rows]
        drop("grounded", [r for r, gone in zip(rows, grounded) if gone])  # a row would lack the documents it cites
        rows = [r for r, gone in zip(rows, grounded) if not gone]
        if kind == "dpo":  # the same text on both sides (a retry that repeated itself, a no-op edit)
            drop("identical", [r for r in rows if same_answer(r)])
            rows = [r for r in rows if not same_answer(r)]

        hit = [r for r in rows if any(s in flagged for s in r["source"])]
        st["flagged"] = len(hit)
        if not cfg.include_flagged:
            rows = [r for r in rows if not any(s in flagged for s in r["source"])]
            drops["flagged"] += [s for r in hit for s in r["source"]]
        red: Counter = Counter()
        st["redacted_rows"] = 0
        if cfg.redact_pii:
            out = []
            for r in rows:
                r2, c = curate.redact_row(r)
                red.update(c)
                st["redacted_rows"] += bool(c)
                out.append(r2)
            rows = out
        for reason in ("too_short", "too_long", "prompt_too_long"):
            gone = [r for r in rows if curate.length_problem(r, cfg) == reason]
            rows = [r for r in rows if curate.length_problem(r, cfg) != reason]
            drop(reason, gone)
        drop("degenerate", [r for r in rows if curate.degenerate(r)])
        rows = [r for r in rows if not curate.degenerate(r)]
        rows, gone = curate.exact_dedup(rows, event_key)
        drop("exact_duplicates", gone)
        rows, gone = curate.near_dedup(_sorted(rows), cfg.near_dup_threshold)
        drop("near_duplicates", gone)
        rows, gone = curate.cap_users(sorted(rows, key=lambda r: (when(r), row_sort_key(r))), owner, cfg)
        drop("user_capped", gone)
        rows = _sorted(rows)
        train, held = split_rows(rows, eval_fraction)
        seen_as: Counter = Counter()

        def shaped(r):
            name = None
            if templates:
                r, name = as_seen(r, templates, row_templates(r, by_id))
            seen_as[name or ("(system)" if system else "(none)")] += 1
            return with_system(r, system) if system else r

        shaped_of = {id(r): shaped(r) for r in rows}  # train and held hold the same row objects
        rows, train, held = ([shaped_of[id(r)] for r in x] for x in (rows, train, held))
        if templates:
            st["templates"] = dict(sorted(seen_as.items()))
        st.update(kept=len(rows), train=len(train), eval=len(held), users=len({owner(r) for r in rows}))
        st["origins"] = dict(sorted(Counter("+".join(sorted({s.split(":")[0] for s in r["source"]}))
                                            for r in rows).items()))  # e.g. "choice", "edit", "choice+rating"
        if kind == "kto":  # KTOTrainer's desirable/undesirable weights depend on this balance
            st["desirable"] = sum(1 for r in rows if r["label"])
            st["undesirable"] = len(rows) - st["desirable"]
        files[kind], files[kind + "_eval"] = train, held
        stages[kind] = st
        redactions[kind] = dict(sorted(red.items()))
        dropped[kind] = {k: sorted(set(v), key=event_key) for k, v in sorted(drops.items()) if v}

    used = sorted({s for rows in files.values() for r in rows for s in r["source"]}, key=event_key)
    kinds = Counter(e["kind"] for e in events)
    manifest = {
        "format": FORMAT,
        "config": {**asdict(cfg), "eval_fraction": eval_fraction, "system": system,
                   **({"templates": sorted(templates)} if templates else {})},
        "events": {
            "total": len(events), "by_kind": {k: kinds.get(k, 0) for k in KINDS},
            "opted_out": len(events) - len(usable), "superseded_ratings": len(superseded_r),
            "retracted_ratings": len(retracted_ratings(usable)),
            "superseded_edits": len(superseded_e), "superseded_choices": len(superseded_c),
            "conflicting_messages": len(verdicts(ratings)[2]),
            "flagged": len(flagged), "used": len(used), "unused": len(usable) - len(used),
        },
        "flagged": [{"event_id": k, "user_id": by_id[k]["user_id"], "reasons": v, "included": cfg.include_flagged}
                    for k, v in sorted(flagged.items(), key=lambda kv: event_key(kv[0]))],
        "stages": stages,
        "redactions": redactions,
        "dropped": dropped,
        "source_event_ids": used,
        "files": {name + ".jsonl": {"rows": len(files[name]),
                                    "sha256": hashlib.sha256(jsonl_bytes(files[name])).hexdigest()}
                  for name in FILE_NAMES},
    }
    manifest["fingerprint"] = hashlib.sha256(
        json.dumps([manifest["config"], manifest["files"]], sort_keys=True).encode()).hexdigest()
    return files, manifest
