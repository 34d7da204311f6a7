"""`kaizen` — the command line. Each area registers its own subcommands:

    cli.main (chat, serve, ask)   cli.docs (docs)   cli.feedback (feedback)   cli.adapters (adapters, adapt)
    lab.run (lab)

A module's `register(sub)` adds parsers to the argparse sub-parsers and sets `func=callable(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from agent.offline import silence

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from agent.settings import Settings  # noqa: E402

AREAS = ["cli.docs", "cli.feedback", "cli.adapters", "lab.run"]


def _cmd_serve(args) -> int:
    if getattr(args, "api_only", False):  # the OpenAI-compatible API without the web UI (web/routes.py)
        import logging

        from web.routes import serve_api_only

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        serve_api_only(Settings.from_env())
        return 0
    import app

    app.main()
    return 0


def _cmd_chat(args) -> int:
    from agent.chat import Answerer

    settings = Settings.from_env()
    answerer = Answerer.from_settings(settings, with_retrieval=args.rag != "off")
    template = args.template or settings.template
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Kaizen chat — model {settings.base_model}, template {template}. Ctrl-D to quit.", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line:
            break
        question = line.strip()
        if not question:
            continue
        try:
            reply = answerer.answer(history, question, template=template, rag=args.rag)
            for piece in reply.generation:
                print(piece, end="", flush=True)
            print()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply.generation.text}]
        if not interactive and args.once:
            break
    return 0


def _cmd_ask(args) -> int:
    from agent.chat import Answerer

    settings = Settings.from_env()
    answerer = Answerer.from_settings(settings, with_retrieval=args.rag != "off")
    reply = answerer.answer([], args.question, template=args.template or settings.template, rag=args.rag)
    for piece in reply.generation:
        print(piece, end="", flush=True)
    print()
    if reply.sources:
        print("\nSources:")
        for i, s in enumerate(reply.sources, 1):
            print(f"  [{i}] {s['file']} (chunk {s['chunk']}, score {s['score']:.3f})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaizen", description="Kaizen Chat: a chat app that learns from its users.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="start the web app (host/port from KAIZEN_HOST/KAIZEN_PORT)")
    p.add_argument("--api-only", action="store_true",
                   help="serve only the OpenAI-compatible API (/v1/...), without the web UI")
    p.set_defaults(func=_cmd_serve)
    for name, fn, helptext in [("chat", _cmd_chat, "chat in the terminal (reads piped stdin too)"),
                               ("ask", _cmd_ask, "answer one question, with sources, and exit")]:
        p = sub.add_parser(name, help=helptext)
        if name == "ask":
            p.add_argument("question")
        else:
            p.add_argument("--once", action="store_true", help="with piped input: answer the first line only")
        p.add_argument("--template", "-t", help="prompt template name (default: KAIZEN_TEMPLATE or plain)")
        p.add_argument("--rag", choices=["auto", "on", "off"], default="auto", help="use the document store")
        p.set_defaults(func=fn)
    for area in AREAS:
        try:
            module = importlib.import_module(area)
        except ModuleNotFoundError as e:
            if e.name != area:
                raise
            continue  # an area not present in this build
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, PermissionError, FileNotFoundError) as e:
        print(f"kaizen: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
