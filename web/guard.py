"""What the web server checks before Gradio sees a request (an ASGI middleware on Gradio's FastAPI app), and the
pure logic behind it.

`Guard` (install with `launch(app_kwargs=guard_app_kwargs(settings))`):
- **Sessions belong to a user.** The first request naming a `session_hash` (queue join, queue data, cancel, run)
  binds it to the logged-in user; another user (or an anonymous client) naming it is refused with 403, so nobody
  reads another user's chat state, takes over their stream or cancels their answer.
- **Public Space mode** (`visitors`, web.visitors): a page load without a valid visitor cookie gets a new
  signed one; every session is bound to its visitor (a Hugging Face login, the cookie, or the page session), so a
  visitor naming another's session hash gets 403, as in login mode.
- **A user removed from the users file is logged out** on their next request (the token is dropped, 401).
- **Login is rate limited** per user name and per client address, with exponential backoff (`LoginLimiter`): a
  limited login gets 429 and `Retry-After` before any password is hashed. (The PBKDF2 check itself runs in a thread:
  `feedback.auth.auth_fn` is async.)
- **Bodies are capped**: a JSON or form body over `max_body_kb` gets 413 before it is read whole.
- **Lone surrogates** (`"\\ud800"` in a JSON body, which no UTF-8 can carry: one broke a session's stream for
  good) are replaced by U+FFFD before any handler sees the text.
- **Cross-site writes are refused** (CSRF): a POST, PUT, PATCH or DELETE whose `Origin` (or, without one, `Referer`)
  names another site than the server's own (its `Host`, or `X-Forwarded-Host` behind a proxy, or one of
  `allowed_origins`) gets 403 with a sentence, before anything reads it: a web page the user happens to visit cannot
  upload files to, chat with or train a local anonymous instance (no login: nothing else stops it), nor ride a
  login cookie (Gradio's is `SameSite=None`). Same-origin pages and clients that send no Origin (gradio_client,
  curl, the openai SDK) are untouched.
- **Headers** on every response: a Content-Security-Policy (no remote scripts, images or frames; no framing),
  `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`.

`LoginLimiter` and `SessionOwners` take the time as an argument and do no I/O.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qs

from web.visitors import COOKIE as VISITOR_COOKIE
from web.visitors import set_cookie_header

CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
       "frame-src 'none'; frame-ancestors 'none'; object-src 'none'; form-action 'self'; base-uri 'self'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
           (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
# A public Space is shown inside huggingface.co's page (an iframe): only that page may frame it.
SPACE_FRAMER = "https://huggingface.co"
PUBLIC_HEADERS = [(b"content-security-policy",
                   CSP.replace("frame-ancestors 'none'", f"frame-ancestors 'self' {SPACE_FRAMER}").encode()),
                  *(h for h in HEADERS if h[0] not in (b"content-security-policy", b"x-frame-options"))]


# ---------------------------------------------------------------------------------------------- pure logic
class LoginLimiter:
    """Failed logins per key ("user:NAME", "addr:IP"). The first `free` failures of a key cost nothing; each one
    after doubles the wait: base_s, 2*base_s, 4*base_s ... up to max_s. A success clears the user's key (not the
    address's: one right password must not reset a guessing address). Keys idle for `forget_s` are dropped."""

    def __init__(self, free: int = 5, base_s: float = 1.0, max_s: float = 900.0, forget_s: float = 3600.0,
                 max_keys: int = 100_000):
        self.free, self.base_s, self.max_s, self.forget_s, self.max_keys = free, base_s, max_s, forget_s, max_keys
        self._fails: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (failures, last failure time)

    def wait(self, key: str, now: float) -> float:
        """Seconds `key` must still wait before its next attempt (0: go ahead)."""
        n, last = self._fails.get(key, (0, 0.0))
        if n < self.free or now - last > self.forget_s:
            return 0.0
        delay = min(self.max_s, self.base_s * 2 ** (n - self.free))
        return max(0.0, last + delay - now)

    def check(self, keys: list[str], now: float) -> float:
        return max((self.wait(k, now) for k in keys), default=0.0)

    def failed(self, keys: list[str], now: float) -> None:
        for k in keys:
            n, last = self._fails.pop(k, (0, 0.0))
            self._fails[k] = (1 if now - last > self.forget_s else n + 1, now)
        while len(self._fails) > self.max_keys:
            self._fails.popitem(last=False)

    def succeeded(self, keys: list[str]) -> None:
        for k in keys:
            if k.startswith("user:"):
                self._fails.pop(k, None)


class SessionOwners:
    """session_hash -> the user who first used it (None: anonymous). Bounded: the oldest sessions are forgotten."""

    def __init__(self, max_sessions: int = 200_000):
        self.max_sessions = max_sessions
        self._owner: OrderedDict[str, str | None] = OrderedDict()

    def claim(self, session: str, user: str | None) -> bool:
        """True when `user` may use `session` (binding it if new); False when it is another user's."""
        if session in self._owner:
            self._owner.move_to_end(session)
            return self._owner[session] == user
        self._owner[session] = user
        while len(self._owner) > self.max_sessions:
            self._owner.popitem(last=False)
        return True

    def owner(self, session: str) -> str | None:
        return self._owner.get(session)


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def clean_text(obj):
    """`obj` (JSON data) with every lone surrogate in its strings (keys included) replaced by U+FFFD."""
    if isinstance(obj, str):
        return _SURROGATE.sub("\ufffd", obj.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
    if isinstance(obj, list):
        return [clean_text(v) for v in obj]
    if isinstance(obj, dict):
        return {clean_text(k): clean_text(v) for k, v in obj.items()}
    return obj


def clean_json_body(body: bytes) -> bytes:
    """The body with lone surrogates replaced (unchanged when it has no surrogate escape or is not JSON)."""
    if not _SURROGATE_ESCAPE.search(body):
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    return json.dumps(clean_text(data)).encode()


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def _host_port(netloc: str, scheme: str = "") -> str:
    """'host:port' lower-cased, the scheme's default port made explicit ('' for an empty netloc)."""
    netloc = netloc.strip().lower().rsplit("@", 1)[-1]
    if not netloc:
        return ""
    if netloc.startswith("["):  # IPv6 literal
        host, _, rest = netloc.partition("]")
        host, port = host + "]", rest.lstrip(":")
    else:
        host, _, port = netloc.partition(":")
    return f"{host}:{port or _DEFAULT_PORTS.get(scheme, '80')}"


def origin_of(value: str) -> tuple[str, str] | None:
    """(scheme, 'host:port') of an Origin or Referer header; None for 'null' and anything that is not a URL."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(value.strip())
    except ValueError:
        return None
    if not u.scheme or not u.netloc:
        return None
    return u.scheme.lower(), _host_port(u.netloc, u.scheme.lower())


def foreign_origin(headers: dict[bytes, bytes], allowed: frozenset[str] = frozenset()) -> str | None:
    """The other site a request comes from, or None when it is the server's own or names none.

    `headers`: lower-cased names -> values. The request's site is its Origin header, else its Referer (absent for
    CLI clients; this app's pages send no Referer). It is the server's own when its host:port is the `Host` header's
    or the `X-Forwarded-Host` header's (a reverse proxy; the scheme may differ there: TLS ends at the proxy), or when
    it is in `allowed` (normalised 'scheme://host:port' strings, see `parse_allowed`). 'null' (a sandboxed frame, a
    file:// page) is never the server's own."""
    raw = headers.get(b"origin") or headers.get(b"referer")
    if raw is None:
        return None
    text = raw.decode("latin-1")
    got = origin_of(text)
    if got is None:
        return text.strip() or "null"
    scheme, hostport = got
    if f"{scheme}://{hostport}" in allowed:
        return None
    for name in (b"host", b"x-forwarded-host"):
        for value in headers.get(name, b"").decode("latin-1").split(","):
            if value.strip() and _host_port(value, scheme) == hostport:
                return None
    return text.split("?")[0].strip()


def parse_allowed(spec: str) -> frozenset[str]:
    """KAIZEN_ALLOWED_ORIGINS ('https://a.example, http://b:8080') as normalised 'scheme://host:port' strings;
    ValueError for an entry that is not an origin."""
    out = set()
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        got = origin_of(item)
        if got is None:
            raise ValueError(f"KAIZEN_ALLOWED_ORIGINS: {item.strip()!r} is not an origin like https://host:port")
        out.add(f"{got[0]}://{got[1]}")
    return frozenset(out)


def login_keys(username: str | None, address: str | None) -> list[str]:
    return [f"user:{(username or '').strip()[:200]}", f"addr:{address or '?'}"]


# ---------------------------------------------------------------------------------------------- the middleware
class Guard:
    """ASGI middleware; see the module docstring. `users_file` empty = anonymous single-user mode (no login, no
    session binding: there is one user)."""

    def __init__(self, app, users_file: str | Path | None = None, max_body_kb: int = 1024,
                 limiter: LoginLimiter | None = None, clock=time.monotonic, allowed_origins: str = "",
                 visitors=None):
        self.app = app
        self.allowed_origins = parse_allowed(allowed_origins)
        self.users_file = Path(users_file) if users_file else None
        self.visitors = visitors  # web.visitors.Visitors: public Space mode
        self.headers = PUBLIC_HEADERS if visitors is not None else HEADERS
        self.max_body = max(1, int(max_body_kb)) * 1024
        self.limiter = limiter or LoginLimiter()
        self.sessions = SessionOwners()
        self.clock = clock

    # -- helpers -------------------------------------------------------------------------------------
    async def _send_json(self, send, status: int, body: dict, extra: list | None = None) -> None:
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                *self.headers, *(extra or [])]})
        await send({"type": "http.response.body", "body": data})

    @staticmethod
    def _cookies(scope) -> dict[str, str]:
        cookies = {}
        for k, v in scope.get("headers") or []:
            if k == b"cookie":
                for part in v.decode("latin-1").split(";"):
                    name, _, value = part.strip().partition("=")
                    cookies[name] = value
        return cookies

    def _token_user(self, scope) -> tuple[str | None, str | None]:
        """(token, user name) from Gradio's login cookie."""
        app = scope.get("app")
        if app is None or not hasattr(app, "tokens"):
            return None, None
        cookies = self._cookies(scope)
        cid = getattr(app, "cookie_id", "")
        token = cookies.get(f"access-token-{cid}") or cookies.get(f"access-token-unsecure-{cid}")
        return token, app.tokens.get(token) if token else None

    def _known(self, name: str) -> bool:
        from feedback.auth import AuthError, find

        try:
            return find(self.users_file, name) is not None
        except AuthError:
            return False

    async def _read_body(self, receive) -> bytes | None:
        """The whole body, or None when it is over the cap (reading stops there)."""
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                break
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        return b"".join(chunks)

    # -- the request -------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                have = {k.lower() for k, _ in msg.get("headers", [])}
                msg = {**msg, "headers": [*msg.get("headers", []), *(h for h in self.headers if h[0] not in have)]}
            await send(msg)

        path = scope.get("path", "")
        method = scope.get("method", "GET")
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        if method in STATE_CHANGING:
            foreign = foreign_origin(headers, self.allowed_origins)
            if foreign is not None:
                return await self._send_json(send, 403, {
                    "error": f"refused: this request comes from another site ({foreign[:200]}), not from this "
                             "app's own page. If that site is yours (a proxy or a front end), name it in "
                             "KAIZEN_ALLOWED_ORIGINS."})
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        declared = headers.get(b"content-length")
        buffered = method in ("POST", "PUT", "PATCH") and ctype in (b"application/json",
                                                                   b"application/x-www-form-urlencoded")
        if buffered and declared and declared.isdigit() and int(declared) > self.max_body:
            return await self._send_json(send, 413, {"error": f"request body over {self.max_body // 1024} KB"})
        body = b""
        if buffered:
            got = await self._read_body(receive)
            if got is None:
                return await self._send_json(send, 413, {"error": f"request body over {self.max_body // 1024} KB"})
            body = clean_json_body(got) if ctype == b"application/json" else got
            if body is not got:
                scope = {**scope, "headers": [(k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                                              for k, v in scope.get("headers") or []]}
            replayed = False

            async def receive_again():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            inner_receive = receive_again
        else:
            inner_receive = receive

        if self.visitors is not None:
            return await self._public(scope, body, inner_receive, send_with_headers)
        if self.users_file is None:
            return await self.app(scope, inner_receive, send_with_headers)

        token, user = self._token_user(scope)
        if user is not None and not self._known(user):  # removed from the users file: logged out now
            app = scope.get("app")
            app.tokens.pop(token, None)
            return await self._send_json(send, 401, {"error": "Not authenticated", "detail": "this user was removed"})

        if path.rstrip("/").endswith("/login") and method == "POST":
            return await self._login(scope, body, inner_receive, send_with_headers)

        if user is None:  # Gradio refuses what needs a login; its /cancel does not check, so it is refused here
            if path.rstrip("/").endswith("/cancel"):
                return await self._send_json(send, 401, {"error": "Not authenticated"})
            return await self.app(scope, inner_receive, send_with_headers)
        session = self._session_of(scope, body)
        if session and not self.sessions.claim(session, user):
            return await self._send_json(send, 403, {"error": "this session belongs to another user"})
        return await self.app(scope, inner_receive, send_with_headers)

    async def _public(self, scope, body: bytes, receive, send):
        """Public mode: a visitor cookie for a page load that has none; each session bound to its visitor."""
        cookies = self._cookies(scope)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        fresh = None
        if method == "GET" and "/gradio_api/" not in path and self.visitors.from_cookie(
                cookies.get(VISITOR_COOKIE)) is None:
            fresh = self.visitors.mint()
        session = self._session_of(scope, body)
        if session:
            # Gradio's OAuth SessionMiddleware (when the Space has OAuth) runs before this one: scope["session"]
            who = self.visitors.identify(cookies, scope.get("session"), session)
            if not self.sessions.claim(session, who):
                return await self._send_json(send, 403, {"error": "this session belongs to another visitor"})
        if fresh is None:
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        https = scope.get("scheme") == "https" or headers.get(b"x-forwarded-proto", b"").split(b",")[0] == b"https"
        cookie = (b"set-cookie", set_cookie_header(fresh, https))

        async def send_cookie(msg):
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", []), cookie]}
            await send(msg)

        return await self.app(scope, receive, send_cookie)

    @staticmethod
    def _session_of(scope, body: bytes) -> str | None:
        if "/gradio_api/" not in scope.get("path", ""):
            return None
        q = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if q.get("session_hash"):
            return q["session_hash"][0]
        if body[:1] == b"{":
            try:
                value = json.loads(body).get("session_hash")
            except (ValueError, AttributeError):
                return None
            return value if isinstance(value, str) else None
        return None

    async def _login(self, scope, body: bytes, receive, send):
        form = parse_qs(body.decode("utf-8", "replace"))
        name = (form.get("username") or [""])[0]
        address = (scope.get("client") or ("?",))[0]
        keys = login_keys(name, address)
        wait = self.limiter.check(keys, self.clock())
        if wait > 0:
            secs = str(math.ceil(wait)).encode()
            return await self._send_json(send, 429, {"error": "too many failed logins; try again later",
                                                     "retry_after_s": math.ceil(wait)},
                                         [(b"retry-after", secs)])
        status = {}

        async def watch(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        await self.app(scope, receive, watch)
        if status.get("code") == 200:
            self.limiter.succeeded(keys)
        else:
            self.limiter.failed(keys, self.clock())


def guard_app_kwargs(settings) -> dict:
    """`launch(app_kwargs=...)` that installs the Guard on Gradio's FastAPI app."""
    from starlette.middleware import Middleware

    visitors = None
    if settings.public:
        from web.visitors import Visitors

        visitors = Visitors.from_settings(settings)
    return {"middleware": [Middleware(Guard, users_file=settings.auth_file or None,
                                      max_body_kb=settings.max_body_kb, allowed_origins=settings.allowed_origins,
                                      visitors=visitors)]}
