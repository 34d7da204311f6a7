"""The one authorization point: who may change adapters, train, run the lab or delete shared data.

    authz = Authz.from_settings(settings)
    authz.is_admin(request)          # bool
    authz.require_admin(request)     # raises gr.Error(REFUSAL ...) for anyone else; nothing has been done yet
    btn.click(authz.admin_only(fn), ...)   # the same check around a handler, before it runs

Without a users file (anonymous single-user mode) the local user is the admin. With one (login mode) the role
is read from the users file on every call, so a demoted or removed user loses admin rights at the next request;
a request without a logged-in user is refused. In public Space mode (`Authz.from_settings` with KAIZEN_PUBLIC) each
visitor is their own user (web.visitors: a Hugging Face login, else a signed cookie, else the page session)
and only a signed-in Hugging Face user named in KAIZEN_ADMINS is an admin. What the UI shows or hides decides
nothing: a handler is reached by its `fn_index` whatever its visibility, so the check runs on the server, inside
the handler.

`admin_only(fn)` keeps `fn`'s signature for Gradio (its inputs, its gr.Progress default) and adds a trailing
`gr.Request` parameter when `fn` has none, so Gradio passes the request in; generator handlers stay generators.
"""
from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path

REFUSAL = "Only an admin can do this"
LOCAL_USER = "local"  # the single local user of anonymous mode (ui.chat.LOCAL_USER)


class NotAdmin(PermissionError):
    """Raised by `check` (the pure form of require_admin)."""


def _request_param(sig: inspect.Signature, hints: dict) -> str | None:
    import gradio as gr

    for name, p in sig.parameters.items():
        if hints.get(name) in (gr.Request, gr.Request | None) or p.annotation in (gr.Request, "gr.Request",
                                                                                  "gr.Request | None"):
            return name
    return None


class Authz:
    """Roles from the users file (`feedback.auth`); `auth_file` empty or None = single local user, who is admin."""

    def __init__(self, auth_file: str | Path | None, visitors=None):
        self.auth_file = Path(auth_file) if auth_file else None
        self.visitors = visitors  # web.visitors.Visitors in public mode

    @classmethod
    def from_settings(cls, settings) -> "Authz":
        if settings.public:
            from web.visitors import Visitors

            return cls(None, Visitors.from_settings(settings))
        return cls(settings.auth_file)

    @property
    def public(self) -> bool:
        return self.visitors is not None

    @property
    def login_mode(self) -> bool:
        """Several users (a users file, or public mode's visitors): nobody is admin just for being there."""
        return self.auth_file is not None or self.public

    def role(self, username: str | None) -> str | None:
        """'admin' / 'user' / None (unknown or anonymous in login mode)."""
        if self.public:
            return self.visitors.role(username)
        if not self.login_mode:
            return "admin"
        if not username:
            return None
        from feedback.auth import AuthError, role_of

        try:
            return role_of(self.auth_file, username)
        except AuthError:  # a broken users file grants nothing
            return None

    def user(self, request) -> str | None:
        """Who is calling: the logged-in user's name in login mode (None when there is none, or when the name is
        no longer in the users file); the visitor's name in public mode; LOCAL_USER ("local") in single-user mode."""
        if self.public:
            return self.visitors.of_request(request)
        name = getattr(request, "username", None)
        if not self.login_mode:
            return name or LOCAL_USER
        return name if name and self.role(name) is not None else None

    def require_user(self, request) -> str:
        """The caller's name (see `user`), or gr.Error: nothing is read or written for nobody."""
        import gradio as gr

        name = self.user(request)
        if name is None:
            raise gr.Error("Log in first: this needs a user.", title="Refused")
        return name

    def store_user(self, store, request) -> int:
        """The caller's user id in the feedback store (created on first sight, its role kept in step)."""
        name = self.require_user(request)
        return store.ensure_user(name, self.role(name) or "user")

    def is_admin(self, request) -> bool:
        return self.role(self.user(request)) == "admin"

    def check(self, request, action: str = "") -> None:
        """NotAdmin unless the caller is an admin."""
        if not self.is_admin(request):
            who = self.user(request) or getattr(request, "username", None) or "an anonymous client"
            raise NotAdmin(f"{REFUSAL}{': ' + action if action else ''} ({who} is not an admin). "
                           "Nothing was changed.")

    def require_admin(self, request, action: str = "") -> None:
        """gr.Error (shown to the caller as a refusal) unless the caller is an admin."""
        import gradio as gr

        try:
            self.check(request, action)
        except NotAdmin as e:
            raise gr.Error(str(e), title="Refused") from None

    def for_admins_quietly(self, fn, outputs: int, action: str = ""):
        """Like admin_only, but anyone else gets `outputs` gr.skip() updates instead of an error: for page-load fills
        of admin-only views (a non-admin's page loads them too, and must neither see an error nor get the data).
        The endpoint is named quiet_admin_<action>."""
        import gradio as gr

        def skip_all():
            return tuple(gr.skip() for _ in range(outputs)) if outputs != 1 else gr.skip()

        guarded = self.admin_only(fn, action)
        sig = guarded.__signature__
        name = next(iter(p for p in sig.parameters.values() if p.annotation is gr.Request)).name

        def wrapper(*args, **kwargs):
            request = sig.bind_partial(*args, **kwargs).arguments.get(name)
            if not self.is_admin(request):
                return skip_all()
            return guarded(*args, **kwargs)

        functools.update_wrapper(wrapper, guarded)
        del wrapper.__wrapped__
        wrapper.__signature__ = sig
        wrapper.__name__ = wrapper.__qualname__ = "quiet_" + guarded.__name__
        return wrapper

    def admin_only(self, fn, action: str = ""):
        """`fn` behind require_admin; see the module docstring."""
        import gradio as gr

        sig = inspect.signature(fn)
        try:
            hints = gr.utils.get_type_hints(fn)
        except Exception:
            hints = {}
        existing = _request_param(sig, hints)
        original = sig
        params = list(sig.parameters.values())
        name = existing or "_authz_request"
        if existing is None:
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            rest = [p for p in params if p not in positional]
            new = inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request,
                                    default=None)
            if any(p.default is inspect.Parameter.empty for p in rest if p.kind == p.KEYWORD_ONLY):
                raise TypeError("admin_only: keyword-only parameters without defaults are not supported")
            sig = sig.replace(parameters=positional + [new] + rest)
        what = action or getattr(fn, "__name__", "")

        def split(args, kwargs):
            arguments = dict(sig.bind_partial(*args, **kwargs).arguments)
            request = arguments.get(name) if existing else arguments.pop(name, None)
            return request, inspect.BoundArguments(original, arguments)

        if inspect.isgeneratorfunction(fn):
            def wrapper(*args, **kwargs):
                request, bound = split(args, kwargs)
                self.require_admin(request, what)
                yield from fn(*bound.args, **bound.kwargs)
        else:
            def wrapper(*args, **kwargs):
                request, bound = split(args, kwargs)
                self.require_admin(request, what)
                return fn(*bound.args, **bound.kwargs)

        functools.update_wrapper(wrapper, fn)
        del wrapper.__wrapped__  # Gradio must read the signature below, not fn's
        # Gradio names an endpoint after its function: admin_promote, admin_run_the_lab ... (never a bare "lambda")
        wrapper.__name__ = wrapper.__qualname__ = "admin_" + (re.sub(r"\W+", "_", what).strip("_").lower() or "fn")
        wrapper.__signature__ = sig
        wrapper.__annotations__ = {**{k: v for k, v in hints.items()}, name: gr.Request}
        wrapper.kaizen_admin_only = True
        return wrapper
