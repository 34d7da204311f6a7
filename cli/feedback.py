"""`kaizen feedback ...` and `kaizen users ...` subcommands (registered by cli.main)."""
from __future__ import annotations

import getpass
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from agent.settings import Settings
from feedback.store import NotFoundError


def open_store(settings: Settings | None = None):
    """The Store on the configured database, with the configured length limits."""
    from feedback.store import Store

    return Store.from_settings(settings or Settings.from_env())


def _cmd_backup(args) -> int:
    open_store().backup(args.path)
    print(f"backup written to {args.path}")
    return 0


def _cmd_stats(args) -> int:
    from feedback.stats import format_table

    store = open_store()
    user_id = None
    if args.user:
        user = store.find_user(args.user)
        if user is None:
            raise NotFoundError(f"no user named {args.user!r} in the feedback store")
        user_id = user["id"]
    stats = store.stats(user_id)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_table(stats))
    return 0


def _cmd_opt(args) -> int:
    store = open_store()
    user = store.find_user(args.user)
    if user is None:
        raise NotFoundError(f"no user named {args.user!r} in the feedback store (they have not used the app yet)")
    opted_out = args.feedback_command == "opt-out"
    store.set_opt_out(user["id"], opted_out)
    print(f"{args.user}: feedback {'excluded from' if opted_out else 'included in'} training")
    return 0


def users_file(args) -> Path:
    """--file, else KAIZEN_AUTH_FILE, else <data_dir>/users.json."""
    if args.file:
        return Path(args.file)
    settings = Settings.from_env()
    return Path(settings.auth_file) if settings.auth_file else Path(settings.data_dir) / "users.json"


def _cmd_users_add(args) -> int:
    from feedback import auth

    path = users_file(args)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the passwords differ")
    auth.add_user(path, args.name, password, args.role, replace=args.replace)
    print(f"user {args.name} ({args.role}) saved in {path}")
    if not Settings.from_env().auth_file:
        print(f"login is off: set KAIZEN_AUTH_FILE={path} to turn it on", file=sys.stderr)
    return 0


def _cmd_users_list(args) -> int:
    from feedback import auth

    for u in auth.load_users(users_file(args)):
        print(f"{u['name']}\t{u['role']}")
    return 0


def _cmd_users_key(args) -> int:
    """An API key for NAME (the same user as NAME's logins), printed once; --revoke revokes NAME's keys."""
    from feedback import api_store, auth

    settings = Settings.from_env()
    store = open_store(settings)
    role = None
    if settings.auth_file:
        role = auth.role_of(settings.auth_file, args.name)
        if role is None:
            raise NotFoundError(f"no user named {args.name!r} in {settings.auth_file}: add them with "
                                f"`kaizen users add {args.name}` first")
    if args.revoke:
        user = store.find_user(args.name)
        n = api_store.revoke_keys(store, user["id"]) if user else 0
        print(f"{args.name}: {n} API key(s) revoked")
        return 0
    key = api_store.create_key(store, store.ensure_user(args.name, role))
    print(key)
    print(f"API key for {args.name}: shown only now (kaizen.db keeps a hash). Use it as "
          "`Authorization: Bearer <key>` (the openai SDK's api_key).", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add the `feedback` and `users` groups to the root `kaizen` sub-parsers."""
    p = sub.add_parser("feedback", help="the feedback store: stats, backup, opt-out, export")
    fsub = p.add_subparsers(dest="feedback_command", required=True)
    b = fsub.add_parser("backup", help="copy the database (VACUUM INTO) to PATH; refuses an existing file")
    b.add_argument("path")
    b.set_defaults(func=_cmd_backup)
    s = fsub.add_parser("stats", help="feedback counts, thumbs ratio, per template/model/adapter, latest edits")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--user", help="only this user's feedback")
    s.set_defaults(func=_cmd_stats)
    for name, helptext in (("opt-out", "exclude USER's feedback from training"),
                           ("opt-in", "include USER's feedback in training again")):
        o = fsub.add_parser(name, help=helptext)
        o.add_argument("user")
        o.set_defaults(func=_cmd_opt)
    if importlib.util.find_spec("feedback.export") is not None:  # written separately; optional in a build
        importlib.import_module("feedback.export").register(fsub)

    u = sub.add_parser("users", help="login users (the KAIZEN_AUTH_FILE users file)")
    usub = u.add_subparsers(dest="users_command", required=True)
    a = usub.add_parser("add", help="add a user (password from a prompt, or --password-stdin)")
    a.add_argument("name")
    a.add_argument("--role", choices=["user", "admin"], default="user")
    a.add_argument("--password-stdin", action="store_true", help="read the password from the first stdin line")
    a.add_argument("--replace", action="store_true", help="reset the password/role of an existing user")
    a.add_argument("--file", help="users file (default: KAIZEN_AUTH_FILE, else <data_dir>/users.json)")
    a.set_defaults(func=_cmd_users_add)
    ls = usub.add_parser("list", help="list users and roles")
    ls.add_argument("--file", help="users file (default: KAIZEN_AUTH_FILE, else <data_dir>/users.json)")
    ls.set_defaults(func=_cmd_users_list)
    k = usub.add_parser("key", help="make an API key for NAME (printed once), or --revoke NAME's keys")
    k.add_argument("name")
    k.add_argument("--revoke", action="store_true", help="revoke every API key of NAME")
    k.set_defaults(func=_cmd_users_key)
