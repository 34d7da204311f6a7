"""The OpenAI-compatible API over HTTP: the /v1 routes of a `web.api.KaizenAPI` (`build_router`; app.py hands them
to Gradio's FastAPI app, same port), server-sent events and disconnects, and the API on its own (`kaizen serve
--api-only`: `api_app`, `bind_host`, `serve_api_only`; `serve_in_thread` for tests and benchmarks)."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time

from fastapi import Request  # at module level: the routes' annotations are resolved against these globals

from feedback import api_store
from web import schema
from web.api import KaizenAPI, is_loopback
from web.schema import ApiError

log = logging.getLogger("kaizen.api")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---------------------------------------------------------------------------------------------- HTTP
def _error(e: ApiError):
    from fastapi.responses import JSONResponse

    return JSONResponse(e.body(), status_code=e.status)


async def _json(request):
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None


def build_router(api: KaizenAPI):
    """The /v1 routes (a FastAPI APIRouter) for `api`."""
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse, StreamingResponse

    router = APIRouter()

    async def who(request: Request) -> dict:
        host = request.client.host if request.client else None
        # inline, not in a worker thread: a key lookup is ~0.05 ms and each thread hop is on the path to the
        # first token (bench/api_speed.py)
        return api.caller(request.headers, host)

    def refusals(fn):
        """The route's ApiError becomes its JSON error response (a 4xx with a message)."""
        @functools.wraps(fn)
        async def route(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except ApiError as e:
                return _error(e)
        return route

    @router.get("/v1/models")
    @refusals
    async def models(request: Request):
        user = await who(request)
        return JSONResponse(await asyncio.to_thread(api.models, user))

    @router.get("/v1/models/{model_id:path}")
    @refusals
    async def model(model_id: str, request: Request):
        user = await who(request)
        found = [m for m in (await asyncio.to_thread(api.models, user))["data"] if m["id"] == model_id]
        if not found:
            raise ApiError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return JSONResponse(found[0])

    @router.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            user = await who(request)
            req = api.check(await _json(request), request.headers, user)  # pure checks and a few stat() calls
            api.begin()
        except ApiError as e:
            return _error(e)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def emit(kind, payload):
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        threading.Thread(target=api.run, args=(req, user, stop, emit), name="kaizen-api-answer", daemon=True).start()
        try:
            kind, payload = await events.get()  # "ready" or "error": errors before the answer are plain 4xx
        except asyncio.CancelledError:
            stop.set()
            raise
        if kind == "error":
            return _error(payload)
        cid, created = payload["id"], int(time.time())
        if req.stream:
            return StreamingResponse(_stream(req, cid, created, events, stop), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        return await _complete(request, req, cid, created, events, stop)

    @router.post("/v1/feedback")
    @refusals
    async def feedback(request: Request):
        user = await who(request)
        body = await _json(request)
        return JSONResponse(await asyncio.to_thread(api.feedback, body, user))

    @router.get("/v1/feedback/stats")
    @refusals
    async def stats(request: Request):
        user = await who(request)
        everyone = request.query_params.get("all", "").lower() in ("1", "true", "yes")
        return JSONResponse(await asyncio.to_thread(api.stats, user, everyone))

    return router


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(req, cid: str, created: int, events: asyncio.Queue, stop: threading.Event):
    """The SSE body. The generator's `finally` runs when the client goes away: the answer stops."""
    try:
        yield _sse(schema.chunk_body(cid, req.model, created, {"role": "assistant", "content": ""}))
        while True:
            kind, payload = await events.get()
            if kind == "piece":
                yield _sse(schema.chunk_body(cid, req.model, created, {"content": payload}))
            elif kind == "done":
                yield _sse(schema.chunk_body(cid, req.model, created, {}, payload["finish"], kaizen=payload["kaizen"]))
                if req.include_usage:
                    body = schema.chunk_body(cid, req.model, created, usage=payload["usage"])
                    body["choices"] = []
                    yield _sse(body)
                yield "data: [DONE]\n\n"
                return
            elif kind == "error":
                yield _sse(payload.body())
                return
    finally:
        stop.set()


async def _complete(request, req, cid: str, created: int, events: asyncio.Queue, stop: threading.Event):
    """The whole answer as one JSON body; a client that disconnects while it is generated stops it."""
    checked = time.monotonic()
    while True:
        try:
            kind, payload = await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            kind = None
        except asyncio.CancelledError:
            stop.set()
            raise
        if time.monotonic() - checked >= 0.5:  # pieces keep coming: look for a gone client twice a second
            checked = time.monotonic()
            if await request.is_disconnected():
                stop.set()
        if kind == "done":
            from fastapi.responses import JSONResponse

            return JSONResponse(schema.completion_body(cid, req.model, payload["text"], payload["finish"],
                                                       payload["usage"], payload["kaizen"], created))
        if kind == "error":
            return _error(payload)


# ---------------------------------------------------------------------------------------------- --api-only
def api_app(settings, answerer=None, store=None, registry=None, start_sync: bool = True):
    """A FastAPI app with only the API (no Gradio): `kaizen serve --api-only`. The same request guard as the
    app (web/guard.py: body cap, headers), the same registry sync and scheduler."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from web.guard import guard_app_kwargs

    if store is None:
        from feedback.integrity import check_database
        from feedback.store import Store

        check_database(settings.db_path)
        store = Store.from_settings(settings)
    if answerer is None:
        from agent.chat import Answerer

        answerer = Answerer.from_settings(settings)
    ab_state: dict = {}
    if registry is None:
        from adapters.registry import Registry

        registry = Registry(settings)
    watcher = None
    if start_sync:
        from adapters.scheduler import Scheduler
        from adapters.watcher import RegistryWatcher

        watcher = RegistryWatcher(registry, answerer.model, ab_state).start()  # the one owner of what is served
        if settings.adapt_watch:
            Scheduler(settings, on_promote=lambda version, folder: watcher.sync_now(), store=store).start()
    api = KaizenAPI(settings, answerer, store, registry, ab_state, watcher=watcher)
    app = FastAPI(title="Kaizen API", docs_url=None, redoc_url=None, openapi_url=None,
                  **guard_app_kwargs(settings))
    app.include_router(build_router(api))

    @app.get("/")
    async def root():
        return JSONResponse({"name": "Kaizen", "api": "/v1", "models": "/v1/models"})

    app.state.kaizen_api = api
    app.state.kaizen_watcher = watcher
    return app


def bind_host(settings, has_keys: bool) -> str:
    """Where `--api-only` listens: the configured host, except that without login mode and without any API key
    it is loopback only (nobody else could be told apart from the local user)."""
    if settings.auth_file or has_keys or is_loopback(settings.host):
        return settings.host
    log.warning("no KAIZEN_AUTH_FILE and no API key: the API listens on 127.0.0.1 only, not %s "
                "(make a key with `kaizen users key NAME`)", settings.host)
    return "127.0.0.1"


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1"):
    """`app` on a uvicorn server in a background thread, on a free port (tests and bench/api_speed.py: a real
    socket, so streaming and disconnects are what a client sees); yields the base URL."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="kaizen-api-server", daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve_api_only(settings) -> None:
    import uvicorn

    app = api_app(settings)
    host = bind_host(settings, api_store.any_keys(app.state.kaizen_api.store))
    log.info("Kaizen API on http://%s:%d/v1", host, settings.port)
    uvicorn.run(app, host=host, port=settings.port, log_level="info")
