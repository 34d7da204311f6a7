"""The lab's report: a table, plots (matplotlib Agg -> PNG), Markdown and JSON, and a plain-language verdict derived
from the numbers. Everything here is a pure function of the result dict except `write_report` and the plotting.

A result is `{"task": {...}, "budget": {...}, "model", "device", "rows": [row, ...]}`; a row is one technique:
`technique`, `label`, `status` ("ok" | "error"), `metrics` (name -> share 0..1), `quality` (the primary metric),
`ttft_ms`, `tokens_per_s`, `prompt_tokens`, `trainable_params`, `total_params`, `train_s` (training or indexing),
`train_peak_mb` (its peak memory), `peak_mem_mb` (extra memory while answering), `disk_mb`, and extras (`sources_used`, `retrieval_hit`, `samples`, `error`, ...).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from agent.files import atomic_write, last_part

LABELS = {"base": "Base model", "prompt": "Prompt engineering", "rag": "RAG", "sft": "SFT LoRA", "dpo": "DPO LoRA",
          "kto": "KTO LoRA", "full": "Full fine-tune"}
SHORT = {"base": "Base", "prompt": "Prompt", "rag": "RAG", "sft": "SFT", "dpo": "DPO", "kto": "KTO", "full": "Full FT"}
SUBJECT = {"squad": "on document questions", "style": "in house-style adherence", "oasst": "in preference accuracy"}
MIN_GAIN_POINTS = 5.0  # smaller differences are reported as "no clear gain"
REPORT_FILES = ("report.md", "report.json", "quality.png", "costs.png", "tradeoff.png")


# ---------------------------------------------------------------------------------------------- formatting (pure)
def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def num(x, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def params(n) -> str:
    if n is None:
        return "–"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    if n >= 1e3:
        return f"{n / 1e3:.0f} k"
    return str(int(n))


def size(mb) -> str:
    """Disk size from MB: '0.4 KB', '1.5 MB', '540 MB'."""
    if mb is None:
        return "–"
    if mb == 0:
        return "0"
    if mb < 1:
        return f"{mb * 1024:.1f} KB"
    return f"{mb:,.1f} MB" if mb < 100 else f"{mb:,.0f} MB"


def noise_points(n_items: int) -> float:
    """The smallest difference worth a claim: MIN_GAIN_POINTS, or one item's worth on small sets."""
    return max(MIN_GAIN_POINTS, 100.0 / n_items if n_items else 100.0)


def baseline(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r.get("status") == "ok" and r.get("quality") is not None]
    return next((r for r in ok if r["technique"] == "base"), ok[0] if ok else None)


def _ms(x: float) -> str:
    return f"{x:+,.0f} ms"


def row_verdict(row: dict, base: dict, n_items: int, subject: str) -> str:
    """One sentence for one technique, relative to the base row."""
    name = SHORT.get(row["technique"], row["technique"])
    if row.get("status") != "ok":
        return f"{name}: failed ({row.get('error') or 'no result'})."
    if row is base:
        return f"{name}: {pct(row['quality'])} {subject} — the reference."
    delta = 100 * (row["quality"] - base["quality"])
    margin = noise_points(n_items)
    if abs(delta) < margin:  # the figures are said as they are, with why they do not count as a gain or a loss
        head = (f"{name}: {delta:+.0f} points {subject} ({pct(base['quality'])} → {pct(row['quality'])}), "
                f"within the noise of {n_items} item{'s' if n_items != 1 else ''} (±{margin:.0f} points)")
    else:
        head = f"{name}: {delta:+.0f} points {subject} ({pct(base['quality'])} → {pct(row['quality'])})"
    costs = []
    if row.get("ttft_ms") is not None and base.get("ttft_ms") is not None:
        costs.append(f"{_ms(row['ttft_ms'] - base['ttft_ms'])} to first token")
    if row.get("prompt_tokens") and base.get("prompt_tokens"):
        ratio = row["prompt_tokens"] / base["prompt_tokens"]
        if ratio >= 1.5:
            costs.append(f"{ratio:.1f}× prompt tokens")
    if row.get("train_s"):
        what = "indexing" if row["technique"] == "rag" else "training"
        costs.append(f"{row['train_s']:.0f} s {what}")
    if row.get("trainable_params"):
        costs.append(f"{params(row['trainable_params'])} trained parameters")
    if (row.get("disk_mb") or 0) >= 0.01:
        costs.append(f"{size(row['disk_mb'])} on disk")
    return head + (", " + ", ".join(costs) if costs else "") + "."


def verdict(result: dict) -> list[str]:
    """Plain-language findings, derived only from the numbers: one line per technique, then the winner and the
    cheapest technique that comes close to it."""
    rows = result.get("rows", [])
    base = baseline(rows)
    if base is None:
        return ["No technique produced a result."]
    n = int(result.get("task", {}).get("items") or 0)
    subject = SUBJECT.get(result.get("task", {}).get("name"), "on the task")
    lines = [row_verdict(r, base, n, subject) for r in rows]
    ok = [r for r in rows if r.get("status") == "ok" and r.get("quality") is not None]
    best = max(ok, key=lambda r: (r["quality"], -(r.get("train_s") or 0)))
    margin = noise_points(n)
    if 100 * (best["quality"] - base["quality"]) < margin:
        lines.append(f"Overall: no technique beat the base model by {margin:.0f} points or more "
                     f"on {n} items at this budget.")
        return lines
    lines.append(f"Best: {SHORT.get(best['technique'], best['technique'])} at {pct(best['quality'])} "
                 f"({100 * (best['quality'] - base['quality']):+.0f} points over the base).")
    close = [r for r in ok if 100 * (best["quality"] - r["quality"]) < margin and r is not best]
    if close:
        cheap = min(close + [best], key=lambda r: ((r.get("train_s") or 0) + (r.get("disk_mb") or 0) / 100,
                                                     r.get("ttft_ms") or 0))
        if cheap is not best:
            lines.append(f"Cheapest within {margin:.0f} points of the best: "
                         f"{SHORT.get(cheap['technique'], cheap['technique'])} ({pct(cheap['quality'])}).")
    return lines


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the Markdown/UI table."""
    metrics = list(result.get("task", {}).get("metrics") or [])
    header = ["Technique", *metrics, "TTFT ms", "tok/s", "prompt tok", "trainable", "train/index s",
              "train peak MB", "serve peak MB", "disk"]
    out = []
    for r in result.get("rows", []):
        if r.get("status") != "ok":
            out.append([r.get("label") or r["technique"], *["error"] * len(metrics), *["–"] * 8])
            continue
        m = r.get("metrics") or {}
        out.append([r.get("label") or r["technique"], *[pct(m.get(k)) for k in metrics], num(r.get("ttft_ms")),
                    num(r.get("tokens_per_s"), 1), num(r.get("prompt_tokens")), params(r.get("trainable_params")),
                    num(r.get("train_s"), 1), num(r.get("train_peak_mb")), num(r.get("peak_mem_mb")),
                    size(r.get("disk_mb"))])
    return header, out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def budget_text(budget: dict) -> str:
    if not budget.get("examples"):
        return "No technique was trained in this run."
    steps = budget.get("steps")
    return (f"Equal training budget for every trained technique: {steps} optimizer step{'' if steps == 1 else 's'}, "
            f"batch size "
            f"{budget.get('batch_size')}, {budget.get('examples')} training examples, max length "
            f"{budget.get('max_length')} tokens, no packing, no gradient accumulation; learning rate per method recipe"
            + (" (" + ", ".join(f"{SHORT.get(k, k)} {v:g}" for k, v in budget["lr"].items() if v) + ")"
               if budget.get("lr") else "") + ".")


def model_name(model) -> str:
    """A model by its name (the last part of its path or hub id), never the server's folders."""
    return last_part(model or "?")


def partial_note(result: dict) -> str:
    """'' for a complete report; else which techniques finished (a stopped run keeps its finished rows)."""
    if result.get("complete", True):
        return ""
    done, planned = len(result.get("rows", [])), len(result.get("techniques") or [])
    return (f"**Partial report:** {done} of {planned} techniques finished; the rest did not run (the run was "
            f"stopped, or is still going).")


def markdown(result: dict) -> str:
    task = result.get("task", {})
    header, rows = table_rows(result)
    parts = [f"# Techniques lab — {task.get('title', task.get('name', ''))}", "",
             f"Model `{model_name(result.get('model'))}` on {result.get('device')}; {task.get('items')} evaluation items; "
             f"headline metric `{task.get('primary')}`. Run {result.get('created', '')}, "
             f"{num(result.get('seconds'), 0)} s in all.", "", budget_text(result.get("budget", {})), "",
             markdown_table(header, rows), "", "## Verdict", ""]
    if partial_note(result):
        parts += [partial_note(result), ""]
    parts += [f"- {line}" for line in result.get("verdict") or verdict(result)]
    parts += ["", "## Plots", "", "![quality](quality.png)", "", "![costs](costs.png)", "",
              "![quality against cost](tradeoff.png)", "", "## Notes", ""]
    for r in result.get("rows", []):
        note = r.get("note") or ""
        extra = []
        if r.get("sources_used") is not None:
            extra.append(f"answers with retrieved sources: {r['sources_used']}/{task.get('items')}")
        if r.get("retrieval_hit") is not None:
            extra.append(f"gold paragraph retrieved: {pct(r['retrieval_hit'])}")
        if r.get("total_params"):
            extra.append(f"trainable {params(r.get('trainable_params'))} of {params(r['total_params'])}")
        loss = r.get("train_loss") or {}
        if loss.get("first") is not None and loss.get("final") is not None:
            extra.append(f"training loss {loss['first']:.3f} → {loss['final']:.3f}")
        rewards = r.get("train_rewards") or {}
        if rewards:
            extra.append("last training batch: reward accuracy "
                         f"{pct(rewards.get('accuracies'))}, margin {num(rewards.get('margins'), 2)}")
        if r.get("error"):
            extra.append(f"error: {r['error']}")
        parts.append(f"- **{r.get('label') or r['technique']}**: {note} {'; '.join(extra)}".rstrip())
    parts += side_by_side(result.get("rows", []))
    return "\n".join(parts) + "\n"


def side_by_side(rows: list[dict], questions: int = 3, width: int = 300) -> list[str]:
    """Markdown lines: the first `questions` questions every answering technique was asked, each with every
    technique's answer under it, so a reader compares what each would serve."""
    answered = [r for r in rows if r.get("samples")]
    if not answered:
        return []
    by_question = [{s.get("question"): s for s in r["samples"]} for r in answered]
    shared = [q for q in (s.get("question") for s in answered[0]["samples"]) if all(q in b for b in by_question)]
    if not shared:
        return []
    out = ["", "## The same questions, answered by each technique", ""]
    for q in shared[:questions]:
        out.append(f"**{' '.join(str(q).split())[:200]}**")
        out.append("")
        for r, b in zip(answered, by_question):
            text = " ".join(str(b[q].get("answer", "")).split())[:width]
            out.append(f"- {SHORT.get(r['technique'], r['technique'])}: {text}")
        out.append("")
    return out


# ---------------------------------------------------------------------------------------------- plots and files
def _bars(ax, names, values, title, fmt="{:.0f}", color="#4C72B0"):
    vals = [0 if v is None else v for v in values]
    bars = ax.bar(names, vals, color=color)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=35, labelsize=8)
    for b, v in zip(bars, values):
        ax.annotate("–" if v is None else fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=7)


def label_offsets(points: list[tuple[float, float]], near: float = 0.04, step: float = 10.0) -> list[float]:
    """Downward label shifts (in points) so that labels of points lying close together (within `near` of the
    axis spans) are stacked instead of printed over each other."""
    xs = [p[0] for p in points]
    xspan, yspan = (max(xs) - min(xs)) or 1.0, 100.0  # quality is a percentage: its axis spans 100
    out: list[float] = []
    for i, (x, y) in enumerate(points):
        close = sum(1 for (px, py) in points[:i] if abs(px - x) / xspan < near * 2 and abs(py - y) / yspan < near)
        out.append(close * step)
    return out


def plot(result: dict, out_dir: Path) -> list[Path]:
    """quality.png (metric bars), costs.png (cost bars), tradeoff.png (quality against cost scatter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.get("rows", []) if r.get("status") == "ok"]
    names = [SHORT.get(r["technique"], r["technique"]) for r in rows]
    metrics = list(result.get("task", {}).get("metrics") or [])
    out_dir = Path(out_dir)
    paths = []

    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.5 * max(1, len(metrics)), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        _bars(ax, names, [None if (r.get("metrics") or {}).get(m) is None else 100 * r["metrics"][m] for r in rows],
              f"{m} (%)", color="#55A868")
        ax.set_ylim(0, 105)
    fig.suptitle(result.get("task", {}).get("title", ""), fontsize=11)
    fig.tight_layout()
    paths.append(out_dir / "quality.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    costs = [("ttft_ms", "time to first token (ms)", "{:.0f}"), ("tokens_per_s", "tokens / s", "{:.1f}"),
             ("prompt_tokens", "prompt tokens", "{:.0f}"), ("trainable_params", "trainable parameters (M)", "{:.2f}"),
             ("train_s", "training / indexing (s)", "{:.0f}"), ("train_peak_mb", "training peak memory (MB)", "{:.0f}"),
             ("peak_mem_mb", "serving peak memory (MB)", "{:.0f}"), ("disk_mb", "size on disk (MB)", "{:.1f}")]
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    for ax, (key, title, fmt) in zip(axes.flat, costs):
        scale = 1e-6 if key == "trainable_params" else 1
        _bars(ax, names, [None if r.get(key) is None else r[key] * scale for r in rows], title, fmt)
    fig.tight_layout()
    paths.append(out_dir / "costs.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (key, title) in zip(axes, [("ttft_ms", "time to first token (ms)"),
                                       ("train_s", "training / indexing time (s)")]):
        points = [(r.get(key) or 0.0, 100 * (r.get("quality") or 0.0)) for r in rows]
        for (x, y), n, dy in zip(points, names, label_offsets(points)):
            ax.scatter([x], [y], s=60)
            ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, 4 - dy), fontsize=8)
        ax.set_xlabel(title)
        ax.set_ylabel(f"{result.get('task', {}).get('primary', 'quality')} (%)")
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    fig.suptitle("Quality against cost", fontsize=11)
    fig.tight_layout()
    paths.append(out_dir / "tradeoff.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """report.json, report.md and the PNGs into `out_dir`; returns name -> path. The verdict is (re)derived here."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["verdict"] = verdict(result)
    pngs = plot(result, out_dir)
    files = {p.name: p for p in pngs}
    md = out_dir / "report.md"
    md.write_text(markdown(result), encoding="utf-8")
    js = out_dir / "report.json"
    atomic_write(js, json.dumps(result, indent=2, ensure_ascii=False, default=str))
    files.update({"report.md": md, "report.json": js})
    return files


# ---------------------------------------------------------------------------------------------- time estimates
# Rough seconds on a 2-core CPU with the 135M base (this machine's runs), used when no earlier report of the task
# says better: per evaluation item and technique, per training step, and a fixed part (loading, indexing, saving).
DEFAULT_COSTS = {"per_item": {"base": 1.5, "prompt": 1.7, "rag": 2.5, "sft": 1.6, "dpo": 1.6, "kto": 1.6,
                              "full": 1.6},
                 "per_step": {"sft": 2.5, "dpo": 4.0, "kto": 4.0, "full": 5.0},
                 "fixed": {"base": 5.0, "prompt": 5.0, "rag": 20.0, "sft": 25.0, "dpo": 30.0, "kto": 30.0,
                           "full": 40.0}}


def costs_from(report: dict) -> dict:
    """Per-item and per-step seconds of each technique in an earlier report (its rows' seconds and train_s)."""
    items = int(report.get("task", {}).get("items") or 0)
    steps = int(report.get("budget", {}).get("steps") or 0)
    out: dict = {"per_item": {}, "per_step": {}, "fixed": {}}
    for r in report.get("rows", []):
        if r.get("status") != "ok" or not r.get("seconds") or not items:
            continue
        t, train = r["technique"], float(r.get("train_s") or 0)
        if t in DEFAULT_COSTS["per_step"] and steps and train:
            out["per_step"][t] = train / steps
            out["per_item"][t] = max(0.0, r["seconds"] - train) / items
        else:
            out["per_item"][t] = float(r["seconds"]) / items
        out["fixed"][t] = 0.0
    return out


def estimate(techniques, steps: int, items: int, past: dict | None = None) -> dict[str, float]:
    """Seconds each technique should take: an earlier run's costs (`costs_from`) where it has them, else
    DEFAULT_COSTS."""
    past = past or {}
    out = {}
    for t in techniques:
        def cost(kind, default=0.0):
            return past.get(kind, {}).get(t, DEFAULT_COSTS[kind].get(t, default))
        out[t] = cost("fixed") + cost("per_item") * items + (cost("per_step") * steps if t in DEFAULT_COSTS[
            "per_step"] else 0.0)
    return out


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"~{max(5, round(seconds / 5) * 5):.0f} s"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def estimate_text(techniques, steps: int, items: int, past: dict | None = None) -> str:
    """One line: the whole run's expected time and each technique's."""
    if not techniques:
        return "Choose at least one technique."
    per = estimate(techniques, steps, items, past)
    source = "from the last run of this task here" if past else "rough figures for a 2-core CPU"
    parts = ", ".join(f"{SHORT.get(t, t)} {duration(s)}" for t, s in per.items())
    return f"Expected time: **{duration(sum(per.values()))}** ({parts}; {source})."
