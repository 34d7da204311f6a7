"""What the gate decided about a version, for a person: the decision and its reasons in words, and held-out prompts
with the active policy's and the candidate's answers side by side. Pure (reads a version's meta.json dict).

    print(review_text(registry.get("v0004-sft")))        # `kaizen adapters review v0004-sft`
    rows = side_by_side(meta)                             # the Adapters tab's comparison table
"""
from __future__ import annotations


def side_by_side(meta: dict, limit: int = 8) -> list[dict]:
    """[{prompt, active, candidate}] for the prompts both policies answered (held-out feedback first, then the
    open-ended regression prompts)."""
    ev = (meta or {}).get("eval") or {}
    cand = (ev.get("candidate") or {}).get("examples") or []
    act = {e["prompt"]: e["answer"] for e in (ev.get("active") or {}).get("examples") or []}
    return [{"prompt": e["prompt"], "active": act.get(e["prompt"], ""), "candidate": e["answer"]}
            for e in cand if e["prompt"] in act][:limit]


def decision_lines(meta: dict) -> list[str]:
    gate = (meta or {}).get("gate") or {}
    if gate.get("promote") is None:
        return ["no gate decision recorded (registered by hand)"]
    against = ((meta.get("eval") or {}).get("active_version")) or "the base model"
    head = f"the gate {'passed' if gate['promote'] else 'refused'} it against {against}"
    return [head] + [f"- {r}" for r in gate.get("reasons") or []]


def review_text(meta: dict, width: int = 160) -> str:
    """A plain-text review: decision, reasons, side-by-side answers (each cut to `width` characters)."""
    lines = [f"{meta.get('version')} ({meta.get('method')}, {meta.get('state')}): " + decision_lines(meta)[0],
             *decision_lines(meta)[1:]]
    pairs = side_by_side(meta)
    if pairs:
        lines.append("")
        lines.append("held-out prompts, active vs candidate:")

        def cut(text):
            text = " ".join((text or "").split())
            return text if len(text) <= width else text[:width - 1] + "…"

        for p in pairs:
            lines += [f"* {cut(p['prompt'])}", f"    active:    {cut(p['active'])}",
                      f"    candidate: {cut(p['candidate'])}"]
    return "\n".join(lines)
