"""The style suite: five house styles, each learned from scripted edits through the real loop, measured on prompts
never seen in training.

For each style (adapters/styles.py): a fresh data dir and SQLite store; scripted users ask the opening prompts of
the OpenAssistant trees and edit every answer into the style (`--edits`, at most 100); one automatic `run_once`
(datasets, training, evaluation, the gate, promotion: exactly what `kaizen adapt` runs); then the base and the
adapter the run promoted (or, when the gate refused, its last candidate, to show what was refused) answer the first
`--eval` prompts of prompt_lottery_en_250_text.jsonl (greedy with the app's anti-loop rules and the plain
template's system prompt, as the app serves them; prompts seen in training are skipped; the lottery prompts from
index 100 on are never read). Per policy: style compliance (the style *and* a real answer), answer relevance to
the prompt (MiniLM cosine), distinct-answer share, loop rate, median length. Goals per style: compliance >= 90%,
relevance within 0.05 of the base, distinct >= 95%.

  .venv/bin/python bench/style_suite.py                                  # all five styles, ~1 h on 2 CPU cores
  .venv/bin/python bench/style_suite.py --styles signoff --edits 40 --eval 20 --out /tmp/suite.json
  .venv/bin/python bench/style_suite.py --set lr=3e-4 --set epochs=3     # SFT recipe overrides, to compare
  .venv/bin/python bench/style_suite.py --styles tldr --work /tmp/tldr    # keep the data dirs to look into

Prints JSON (and writes it to --out).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from adapters import collapse  # noqa: E402
from lab.tasks import SHARED_DATA, oasst_first_turns, style_events  # noqa: E402
from adapters.styles import STYLES  # noqa: E402
from agent.settings import Settings  # noqa: E402

GOALS = {"compliance": 0.90, "relevance_drop": 0.05, "distinct": 0.95}
LOTTERY_FIRST = 100  # lottery prompts from index 100 on are reserved for independent checks


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load_prompts(data: Path, edits: int, n_eval: int) -> tuple[list[tuple[str, str]], list[str]]:
    trees = [json.loads(line) for line in (data / "oasst_en_100" / "en_100_tree.jsonl").open(encoding="utf-8")]
    train = oasst_first_turns(trees)[:edits]
    seen = {p for p, _ in train}
    lottery = [json.loads(line) for line in (data / "oasst_en_100" / "prompt_lottery_en_250_text.jsonl")
               .open(encoding="utf-8")][:LOTTERY_FIRST]
    unseen = [t.strip() for t in lottery if isinstance(t, str) and t.strip() and t.strip() not in seen]
    return train, unseen[:n_eval]


def answer(settings: Settings, folder: str | None, prompts: list[str], max_new_tokens: int
           ) -> tuple[list[str], list[bool]]:
    """Answers of the base (folder None) or a LoRA folder, with the plain template's system prompt, decoded as the
    app serves them (greedy, with the settings' anti-loop rules, as the gate does), and per answer whether it ran
    into the token cap."""
    from adapters.evaluate import generate
    from agent.decoding import served_decoding
    from agent.model import load_base
    from agent.templates import serving_system

    model, tok, dev = load_base(settings)
    tok.padding_side = "left"
    if folder:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, folder).eval()
    system = serving_system("plain")
    rows = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
            for p in prompts]
    capped: list[bool] = []
    out = generate(model, tok, rows, dev, max_new_tokens, capped=capped,
                   decoding=served_decoding(settings, temperature=0.0))
    return out, capped


def measure(style, prompts: list[str], answered: tuple[list[str], list[bool]]) -> dict:
    from adapters.evaluate import relevance

    answers, capped = answered
    rel = relevance(prompts, answers)
    ended = [a for a, cut in zip(answers, capped) if not cut]
    return {"compliance": sum(map(style.follows, answers)) / len(answers), "relevance": sum(rel) / len(rel),
            # a style whose fixed text ends the answer cannot show in one the token cap cut off (the app's cap is
            # 256 tokens, the suite's 96): the share in the style among the answers that ended, beside the goal's
            "ended": len(ended) / len(answers),
            "compliance_of_ended": sum(map(style.follows, ended)) / len(ended) if ended else None,
            "distinct": collapse.distinct_share(answers), "loops": sum(map(collapse.loops, answers)) / len(answers),
            "median_words": statistics.median(len(a.split()) for a in answers),
            "examples": [{"prompt": p, "answer": a} for p, a in zip(prompts[:4], answers[:4])],
            "looping": [{"prompt": p, "answer": a} for p, a in zip(prompts, answers) if collapse.loops(a)],
            "misses": [{"prompt": p, "answer": a} for p, a in zip(prompts, answers) if not style.follows(a)][:8]}


def run_style(name: str, train: list[tuple[str, str]], prompts: list[str], base_answers: list[str],
              base_model: str, work: Path, max_new_tokens: int, overrides: dict) -> dict:
    from adapters.registry import Registry
    from adapters.scheduler import run_once
    from adapters.train import recipe_for
    from feedback.store import Store

    style = STYLES[name]
    settings = Settings(data_dir=work / name, base_model=base_model)
    store = Store.from_settings(settings)
    try:
        edits = style_events(store, train, edit=style.edit)
    finally:
        store.close()
    t0 = time.perf_counter()
    recipe = recipe_for("sft", **overrides) if overrides else None
    result = run_once(settings, force=True, recipe=recipe)
    seconds = time.perf_counter() - t0
    out = {"style": name, "description": style.description, "edits": edits, "status": result["status"],
           "loop_seconds": round(seconds, 1), "base": measure(style, prompts, base_answers),
           "attempts": result.get("attempts"), "reason": result.get("reason") or result.get("error")}
    version = result.get("version")
    if version:
        reg = Registry(settings)
        meta = reg.get(version)
        out.update(version=version, method=meta.get("method"), train=meta.get("metrics"),
                   gate=meta.get("gate"), served=reg.serving())
        measured = {}  # every version the loop trained, refused ones too: did the gate refuse a good adapter?
        for attempt in out["attempts"] or [{"version": version}]:
            v = attempt.get("version")
            if not v:
                continue
            v_meta = reg.get(v)
            if v not in measured:
                measured[v] = measure(style, prompts, answer(settings, v_meta["folder"], prompts, max_new_tokens))
            attempt["measured"] = {k: x for k, x in measured[v].items() if k not in ("examples", "looping", "misses")}
            attempt["gate_similarity"] = {who: (rep or {}).get("similarity") for who, rep in
                                          (v_meta.get("eval") or {}).items() if who != "active_version"}
        adapter = measured[version]
        out["adapter"] = adapter
        out["goals"] = {"compliance": adapter["compliance"] >= GOALS["compliance"],
                        "relevance": adapter["relevance"] >= out["base"]["relevance"] - GOALS["relevance_drop"],
                        "distinct": adapter["distinct"] >= GOALS["distinct"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", default=",".join(STYLES), help=f"comma-separated, of {', '.join(STYLES)}")
    p.add_argument("--edits", type=int, default=60, help="scripted edits per style (at most 100)")
    p.add_argument("--eval", type=int, default=100, help="unseen lottery prompts answered per policy")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--data", type=Path, default=SHARED_DATA)
    p.add_argument("--base-model", default=None, help="a model folder (default: the bundled model, converted)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="SFT recipe override")
    p.add_argument("--work", type=Path, default=None,
                   help="keep each style's data dir (store, registry, candidates, gate reports) here")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "style_suite.json")
    args = p.parse_args(argv)
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    unknown = [s for s in styles if s not in STYLES]
    if unknown or not 1 <= args.edits <= 100:
        p.error(f"unknown style(s) {unknown}" if unknown else "--edits must be 1..100")
    overrides = {}
    for item in args.set:
        k, _, v = item.partition("=")
        try:
            overrides[k] = json.loads(v)
        except ValueError:
            overrides[k] = v
    from agent.model import convert_bundled

    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory(prefix="style-suite-") as tmp:
        work = Path(tmp)
        base_model = args.base_model or str(convert_bundled(work / "models"))
        train, prompts = load_prompts(args.data, args.edits, args.eval)
        log(f"{len(train)} training prompts, {len(prompts)} unseen eval prompts")
        base_answers = answer(Settings(data_dir=work / "base", base_model=base_model), None, prompts,
                              args.max_new_tokens)
        results = []
        report = {"edits": len(train), "eval_prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                  "recipe_overrides": overrides, "goals": GOALS, "styles": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for name in styles:
            log(f"style {name}: edits -> run_once -> answers")
            results.append(run_style(name, train, prompts, base_answers, base_model, work, args.max_new_tokens,
                                     overrides))
            log(json.dumps({k: results[-1].get(k) for k in ("style", "status", "version", "goals")}))
            args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")  # after each style: a stopped
            # run keeps the styles it finished
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
