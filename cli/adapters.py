"""`kaizen adapters ...` and `kaizen adapt`.

    kaizen adapters list [--json]          versions, state, method, key metrics; * = served
    kaizen adapters show V                 a version's meta.json
    kaizen adapters review V               the gate's decision and reasons, held-out answers beside the active's
    kaizen adapters promote V              make V active (validated first)
    kaizen adapters rollback               back to the previously active version (or the base)
    kaizen adapters pin V|base             serve V (or the base) whatever gets promoted; `unpin` to follow ACTIVE
    kaizen adapters validate FOLDER        check a folder as the registry would (safetensors only, base match)
    kaizen adapt [--force] [--method sft|dpo|kto|full] [--margin 0.05]    one run of the loop now
    kaizen adapt --watch [--interval 60]   keep checking the threshold (Ctrl-C to stop)
"""
from __future__ import annotations

import json
import sys
import time

from adapters.config import METHODS
from agent.settings import Settings


def _registry():
    from adapters.registry import Registry

    return Registry(Settings.from_env())


def _fmt(x, digits=3):
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def _cmd_list(args) -> int:
    reg = _registry()
    rows = reg.list()
    if args.json:
        from adapters import ab

        print(json.dumps({"active": reg.active(), "pinned": reg.pinned(), "serving": reg.serving(),
                          "ab": ab.read(reg), "versions": rows}, indent=2, default=str))
        return 0
    serving = reg.serving()
    from adapters import ab

    print(f"serving: {serving or 'base'}   active: {reg.active() or 'base'}   pinned: {reg.pinned() or '-'}   "
          f"{ab.summary(ab.read(reg))}")
    if not rows:
        print("no versions yet (kaizen adapt --force trains one)")
        return 0
    print(f"  {'version':<14} {'state':<9} {'rows':>5} {'loss':>7} {'pref':>6} {'sim':>6}  {'gate':<8} created")
    for r in rows:
        m, ev = r.get("metrics") or {}, ((r.get("eval") or {}).get("candidate") or {})
        gate = (r.get("gate") or {}).get("promote")
        print(f"{'*' if r.get('serving') else ' '} {r['version']:<14} {r.get('state', '?'):<9} "
              f"{_fmt(m.get('rows')):>5} {_fmt(m.get('final_loss')):>7} "
              f"{_fmt((ev.get('pref') or {}).get('accuracy'), 2):>6} "
              f"{_fmt((ev.get('similarity') or {}).get('rouge_l'), 2):>6}  "
              f"{'-' if gate is None else ('passed' if gate else 'refused'):<8} {r.get('created', '')}")
    return 0


def _cmd_show(args) -> int:
    print(json.dumps(_registry().get(args.version), indent=2, default=str))
    return 0


def _cmd_review(args) -> int:
    from adapters.review import review_text

    print(review_text(_registry().get(args.version)))
    return 0


def _cmd_promote(args) -> int:
    reg = _registry()
    reg.promote(args.version)
    print(f"active: {args.version}" + (f" (pinned {reg.pinned()} is still served)" if reg.pinned() else ""))
    return 0


def _cmd_rollback(args) -> int:
    reg = _registry()
    before = reg.active()
    now = reg.rollback()
    print(f"rolled back: {before or 'base'} -> {now or 'base'}")
    return 0


def _cmd_pin(args) -> int:
    reg = _registry()
    target = None if args.version in ("none", "off") else args.version
    served = reg.pin(target)
    print(f"serving: {served or 'base'}" + (" (pinned)" if target else " (following ACTIVE)"))
    return 0


def _cmd_unpin(args) -> int:
    served = _registry().pin(None)
    print(f"serving: {served or 'base'} (following ACTIVE)")
    return 0


def _cmd_ab(args) -> int:
    from adapters import ab

    reg = _registry()
    if args.stop:
        was = ab.stop(reg)
        print(f"A/B test of {was['version']} stopped" if was else "no A/B test was running")
    elif args.version:
        print(ab.summary(ab.start(reg, args.version, args.share)))
    else:
        print(ab.summary(ab.read(reg)))
    return 0


def _cmd_validate(args) -> int:
    info = _registry().validate(args.folder)
    print(json.dumps(info, indent=2))
    return 0


class _Bar:
    """A one-line progress bar on stderr from the run's progress events."""

    def __init__(self):
        self.last = ""

    def __call__(self, e: dict) -> None:
        kind = e.get("event")
        if kind == "step" and e.get("max_steps"):
            done = e["step"] / e["max_steps"]
            bar = "#" * int(28 * done)
            text = f"\rtraining [{bar:<28}] {e['step']}/{e['max_steps']} steps, {e.get('elapsed', 0):.0f} s"
        elif kind == "log" and "loss" in e:
            text = f"\r  step {e['step']}: loss {e['loss']:.4f}" + (
                f", margin {e['rewards/margins']:.3f}" if "rewards/margins" in e else "") + " " * 20
            print(text, file=sys.stderr)
            return
        elif kind in ("datasets", "training", "replay", "evaluating", "promoted", "refused", "eval"):
            detail = {k: v for k, v in e.items() if k not in ("event", "time")}
            text = f"\r{kind} {json.dumps(detail, default=str)}"
            print(text, file=sys.stderr)
            return
        else:
            return
        print(text, end="", file=sys.stderr, flush=True)


def _print_result(r: dict) -> None:
    for a in (r.get("attempts") or [])[:-1]:  # earlier candidates the gate refused
        print(f"adapt: {a['status']} {a['version']} ({a['method']}); trying the next method")
    line = f"adapt: {r['status']}"
    if r.get("version"):
        line += f" {r['version']} ({r.get('method')})"
    print(line)
    if r.get("reason"):
        for reason in r["reason"].split("; "):
            print(f"  - {reason}")
    if r.get("error") and r["status"] == "failed":
        print(r["error"], file=sys.stderr)


def _cmd_adapt(args) -> int:
    from adapters.scheduler import run_once

    settings = Settings.from_env()
    kw = dict(method=args.method, margin=args.margin, progress=_Bar())
    if not args.watch:
        r = run_once(settings, force=args.force, **kw)
        print(file=sys.stderr)
        _print_result(r)
        return 1 if r["status"] == "failed" else 0
    print(f"watching: a run after {settings.adapt_min_events} new events or {settings.adapt_hours} h "
          f"(checked every {args.interval:.0f} s); Ctrl-C stops", file=sys.stderr)
    force = args.force
    try:
        while True:
            r = run_once(settings, force=force, **kw)
            force = False
            if r["status"] != "skipped":
                print(file=sys.stderr)
                _print_result(r)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def register(sub) -> None:
    p = sub.add_parser("adapters", help="adapter versions: list, promote, rollback, pin")
    s = p.add_subparsers(dest="adapters_command", required=True)
    q = s.add_parser("list", help="list versions (* = served)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_list)
    q = s.add_parser("show", help="a version's metadata (JSON)")
    q.add_argument("version")
    q.set_defaults(func=_cmd_show)
    q = s.add_parser("review", help="the gate's decision in words, and answers side by side with the active")
    q.add_argument("version")
    q.set_defaults(func=_cmd_review)
    q = s.add_parser("promote", help="make a version active")
    q.add_argument("version")
    q.set_defaults(func=_cmd_promote)
    q = s.add_parser("rollback", help="back to the previously active version (or the base)")
    q.set_defaults(func=_cmd_rollback)
    q = s.add_parser("pin", help="serve a version (or 'base') whatever gets promoted")
    q.add_argument("version", help="a version name, 'base', or 'none' to unpin")
    q.set_defaults(func=_cmd_pin)
    q = s.add_parser("unpin", help="serve the active version again")
    q.set_defaults(func=_cmd_unpin)
    q = s.add_parser("ab", help="A/B test: send a share of new conversations to a version")
    q.add_argument("version", nargs="?", help="the version to test (omit to show the running test)")
    q.add_argument("--share", type=float, default=0.2, help="share of new conversations (default 0.2)")
    q.add_argument("--stop", action="store_true", help="end the running test")
    q.set_defaults(func=_cmd_ab)
    q = s.add_parser("validate", help="check an adapter folder (safetensors only, base model match)")
    q.add_argument("folder")
    q.set_defaults(func=_cmd_validate)

    p = sub.add_parser("adapt", help="run the adaptation loop once (or --watch)")
    p.add_argument("--force", action="store_true", help="train even below the threshold")
    p.add_argument("--method", choices=METHODS, help="training method (default: sft, else dpo, else kto by data)")
    p.add_argument("--margin", type=float, default=0.05, help="how much the candidate must beat the active by")
    p.add_argument("--watch", action="store_true", help="keep checking the threshold")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between checks with --watch")
    p.set_defaults(func=_cmd_adapt)
