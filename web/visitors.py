"""Public Space mode (`KAIZEN_PUBLIC=1`): who a visitor is, without a users file.

A visitor is, in this order:
1. **a Hugging Face user** signed in with the Space's OAuth (`hf_oauth: true` in the Space's front matter; Gradio's
   `gr.LoginButton` and its session cookie): their HF user name, e.g. `alice`;
2. **an anonymous visitor** with a signed cookie (`kaizen_visitor`, set on the first page load, kept a year):
   `visitor:<16 hex>`, the same across reloads in the same browser;
3. **a page session** when the browser keeps no cookie (a third-party iframe that blocks them):
   `visitor:s-<16 hex>`, derived from the session hash, so the chat still works for that page load.

HF user names never contain ':', so an anonymous name can never be taken for a signed-in user's, and only a signed-in
user named in `KAIZEN_ADMINS` is an admin (`Visitors.role`); ui.authz asks this module and decides. The
cookie is an HMAC-SHA256 over the visitor id with a key kept in the data dir (`visitor.key`, mode 0600), so a
visitor cannot claim another id; the web guard (web.guard) sets it and binds each session to its visitor.

`Visitors` is pure apart from reading the key; `identify` takes plain values (cookies, the OAuth session, the
session hash) so the guard, which sees raw ASGI requests, and the handlers, which see gr.Request, agree.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

COOKIE = "kaizen_visitor"
PREFIX = "visitor:"
MAX_AGE_S = 365 * 24 * 3600
KEY_FILE = "visitor.key"
NOT_PERSISTENT = ("**Feedback is lost when this Space restarts**: no persistent storage is attached, so chats, "
                  "feedback and documents live only until the next restart.")
_ID = re.compile(r"[0-9a-f]{16}")


def load_key(data_dir: str | Path) -> bytes:
    """The signing key in `data_dir/visitor.key`, created (32 random bytes, mode 0600) when missing."""
    path = Path(data_dir) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < 32:
            raise ValueError(f"{path}: the visitor key is damaged (under 32 bytes); delete it to make a new one "
                             "(every anonymous visitor then starts afresh)") from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def oauth_name(session: Mapping | None, now: float | None = None) -> str | None:
    """The HF user name in Gradio's OAuth session (`session["oauth_info"]`, what /login/callback stores), or None
    when nobody is signed in or the login has expired."""
    info = (session or {}).get("oauth_info") if isinstance(session, Mapping) else None
    if not isinstance(info, Mapping):
        return None
    expires = info.get("expires_at")
    if expires is not None and float(expires) < (time.time() if now is None else now):
        return None
    name = (info.get("userinfo") or {}).get("preferred_username")
    return name if isinstance(name, str) and name and ":" not in name else None


class Visitors:
    def __init__(self, key: bytes, admins: frozenset[str] | set[str] = frozenset()):
        self.key = key
        self.admins = frozenset(admins)

    @classmethod
    def from_settings(cls, settings) -> "Visitors":
        return cls(load_key(settings.data_dir), settings.admin_names)

    def _mac(self, domain: str, value: str) -> str:
        return hmac.new(self.key, f"{domain}:{value}".encode(), hashlib.sha256).hexdigest()

    def mint(self) -> str:
        """A new cookie value for a new anonymous visitor."""
        vid = secrets.token_hex(8)
        return f"{vid}.{self._mac('cookie', vid)}"

    def from_cookie(self, value: str | None) -> str | None:
        """`visitor:<id>` for a cookie this app signed; None for a missing, malformed or forged one."""
        vid, _, mac = (value or "").partition(".")
        if not _ID.fullmatch(vid) or not hmac.compare_digest(mac, self._mac("cookie", vid)):
            return None
        return PREFIX + vid

    def from_session(self, session_hash: str | None) -> str | None:
        if not session_hash:
            return None
        return f"{PREFIX}s-{self._mac('session', session_hash)[:16]}"

    def identify(self, cookies: Mapping | None, session: Mapping | None, session_hash: str | None) -> str | None:
        """The visitor's name (see the module docstring), or None when the request carries nothing to go by."""
        return (oauth_name(session) or self.from_cookie((cookies or {}).get(COOKIE))
                or self.from_session(session_hash))

    def role(self, name: str | None) -> str | None:
        """'admin' for a signed-in HF user named in KAIZEN_ADMINS, 'user' for every other visitor."""
        if not name:
            return None
        return "admin" if name in self.admins and ":" not in name else "user"

    def of_request(self, request) -> str | None:
        """The visitor behind a gr.Request (its cookies, its OAuth session, its session hash)."""
        if request is None:
            return None
        inner = getattr(request, "request", None)  # the fastapi Request (None when Gradio rebuilt it from kwargs)
        scope = getattr(inner, "scope", None)
        session = scope.get("session") if isinstance(scope, dict) else None
        cookies = inner.cookies if inner is not None else (getattr(request, "kwargs", None) or {}).get("cookies")
        return self.identify(cookies, session, getattr(request, "session_hash", None))


def set_cookie_header(value: str, https: bool) -> bytes:
    """The Set-Cookie header for a visitor cookie. Over https (a Space, shown in an iframe on huggingface.co) it is
    SameSite=None; Secure; Partitioned, so the browser keeps it in the third-party frame; on plain http, Lax."""
    attrs = f"{COOKIE}={value}; Path=/; Max-Age={MAX_AGE_S}; HttpOnly"
    attrs += "; Secure; SameSite=None; Partitioned" if https else "; SameSite=Lax"
    return attrs.encode("latin-1")


def oauth_available() -> bool:
    """The Space has Hugging Face OAuth (`hf_oauth: true` gives it OAUTH_CLIENT_ID) and runs on Spaces, where
    Gradio's real login routes work. Elsewhere Gradio would mock the login with the machine's HF token, which an
    offline app does not have, so the Sign-in button is left out and visitors are anonymous."""
    on_spaces = os.environ.get("SYSTEM") == "spaces" and os.environ.get("SPACE_ID")  # gradio.utils.get_space's test
    return bool(os.environ.get("OAUTH_CLIENT_ID")) and bool(on_spaces)
