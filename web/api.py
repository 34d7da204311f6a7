"""The OpenAI-compatible API's logic: who is calling, the models, a chat completion, feedback and stats
(`KaizenAPI`). The HTTP side — `/v1/chat/completions` (streaming SSE and not), `/v1/models`, `/v1/feedback` and
`/v1/feedback/stats` as FastAPI routes on the app's own server or on their own (`kaizen serve --api-only`) — is
web/routes.py.

Any OpenAI client chats through the same pipeline as the Chat tab (agent.chat.Answerer: templates, RAG, the
served adapter and its A/B test), every answer is stored like a UI answer (feedback.store), and feedback comes
back through `/v1/feedback` with the UI's server-side checks. The pure part (request checks, ids, threading,
response shapes) is web/schema.py; the tables are feedback/api_store.py.

Who is calling (`KaizenAPI.caller`):
- `Authorization: Bearer <key>` with a key from `kaizen users key NAME` → that user (the same store user the UI
  has; in login mode the name must still be in the users file, and takes its role from there).
- No key (or one that is not a key) is enough only in anonymous single-user mode (no KAIZEN_AUTH_FILE, not a
  public Space) while no key exists at all, and only from a loopback client: then the caller is the UI's local
  user. Otherwise 401 (login mode, public mode, or keys exist) or 403 (a remote client).

A client that disconnects stops its generation (the stop event of the Answerer); what was generated is stored.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time

from feedback import api_store
from web import schema
from web.schema import ApiError

log = logging.getLogger("kaizen.api")
LOCAL_USER = "local"  # the UI's user in anonymous single-user mode (ui.chat.LOCAL_USER)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def bearer(headers) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class KaizenAPI:
    """The API's logic over the app's Answerer, Store, Registry and A/B state (`ab_state["experiment"]`, kept by
    the app's `adapters.watcher.RegistryWatcher`; an adapter a request names is attached through `watcher`)."""

    def __init__(self, settings, answerer, store, registry=None, ab_state: dict | None = None,
                 max_inflight: int | None = None, watcher=None):
        self.settings = settings
        self.answerer = answerer
        self.store = store
        self.registry = registry
        self.ab_state = ab_state if ab_state is not None else {}
        self.watcher = watcher
        self.max_inflight = max_inflight or 16 * max(1, answerer.gate.capacity)
        self._inflight = 0
        self._guard = threading.Lock()

    # -- who is calling ------------------------------------------------------------------------------
    def caller(self, headers, client_host: str | None) -> dict:
        """The calling user {"id", "name"}; ApiError 401/403 otherwise (see the module docstring)."""
        key = bearer(headers)
        user = api_store.user_for_key(self.store, key) if key else None
        auth_file = self.settings.auth_file
        if user is not None:
            role = None
            if auth_file:
                from feedback.auth import AuthError, role_of

                try:
                    role = role_of(auth_file, user["name"])
                except AuthError:
                    role = None
                if role is None:
                    raise ApiError(401, f"the user {user['name']!r} of this API key can no longer log in",
                                   type="authentication_error", code="invalid_api_key")
            uid = self.store.ensure_user(user["name"], role)
            return {"id": uid, "name": user["name"], "role": role or self.store.user(uid)["role"]}
        if auth_file or api_store.any_keys(self.store):
            why = "an invalid API key" if key else "no API key"
            raise ApiError(401, f"this server needs an API key (got {why}); an admin makes one with "
                                "`kaizen users key NAME`", type="authentication_error", code="invalid_api_key")
        if self.settings.public:  # a Space: its proxy may look like loopback, and nobody there is the local admin
            raise ApiError(401, "a public Space's API needs an API key; the Space's owner makes one with "
                                "`kaizen users key NAME`", type="authentication_error", code="invalid_api_key")
        if not is_loopback(client_host):
            raise ApiError(403, "without login mode or API keys the API answers loopback clients only; make a key "
                                "with `kaizen users key NAME`", type="permission_error", code="loopback_only")
        return {"id": self.store.ensure_user(LOCAL_USER, "admin"), "name": LOCAL_USER, "role": "admin"}

    # -- models --------------------------------------------------------------------------------------
    def versions(self, admin: bool = False) -> list[str]:
        """Versions a request may name as kaizen:<version>: the attached adapters (what the UI's Adapter selector
        offers everyone: the served version and the A/B candidate), and for an admin also the registry's other
        servable versions (attached on first use), as the Adapters tab lets admins try them."""
        names = set(getattr(self.answerer.model, "adapters", {}) or {})
        if self.registry is not None and admin:
            try:
                for meta in self.registry.list():
                    if meta.get("state") not in ("retired", "broken") and meta.get("kind") != "full" \
                            and meta.get("version"):
                        names.add(meta["version"])
            except (OSError, ValueError) as e:
                log.warning("cannot list the registry: %s", e)
        return sorted(names)

    def models(self, user: dict) -> dict:
        serving = getattr(self.answerer.model, "active", None)
        experiment = self.ab_state.get("experiment")
        base = getattr(self.answerer.model, "name", "model")
        data = []
        for mid in schema.model_ids(self.versions(user.get("role") == "admin")):
            info = {"base_model": base}
            if mid == schema.MODEL:
                info.update(serves=serving or "base", ab=experiment)
            data.append({"id": mid, "object": "model", "created": 0, "owned_by": "kaizen", "kaizen": info})
        return {"object": "list", "data": data}

    # -- chat ----------------------------------------------------------------------------------------
    def check(self, body, headers, user: dict) -> schema.ChatRequest:
        s = self.settings
        named = isinstance(body, dict) and body.get("model") not in (schema.MODEL, schema.BASE_MODEL)
        versions = self.versions(user.get("role") == "admin") if named else []  # only for kaizen:<version>
        return schema.check_chat(body, versions=versions, templates=self.template_names(),
                                 default_template=s.template, max_input_chars=s.max_input_chars,
                                 max_answer_chars=s.max_edit_chars, max_new_tokens=s.max_new_tokens,
                                 headers=headers)

    def template_names(self) -> list[str]:
        """The template names, re-read only when a template file changes (parsing them all takes ~4 ms, on the
        path to the first token; the Answerer reads them again, as it does for the UI)."""
        from pathlib import Path

        from agent.templates import BUILTIN_DIR

        files = [*BUILTIN_DIR.glob("*.yaml"), *Path(self.settings.templates_dir).glob("*.yaml")]
        stamp = tuple(sorted((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files))
        if getattr(self, "_templates", (None,))[0] != stamp:
            self._templates = (stamp, sorted(self.answerer.templates()))
        return self._templates[1]

    def _attach(self, version: str) -> None:
        model = self.answerer.model
        if version in (getattr(model, "adapters", {}) or {}) or self.registry is None:
            return
        watcher = self.watcher
        if watcher is None or watcher.registry is not self.registry:  # no app watcher: one over this registry
            from adapters.watcher import RegistryWatcher

            watcher = RegistryWatcher(self.registry, model, self.ab_state)  # not started: only `attach` is used
        watcher.attach(version)

    def begin(self) -> None:
        with self._guard:
            if self._inflight >= self.max_inflight:
                raise ApiError(429, f"{self._inflight} answers are already running or waiting; try again soon",
                               type="rate_limit_error", code="busy")
            self._inflight += 1

    def end(self) -> None:
        with self._guard:
            self._inflight -= 1

    def run(self, req: schema.ChatRequest, user: dict, stop: threading.Event, emit) -> None:
        """Answer `req` for `user` (in a worker thread), calling `emit(kind, payload)`: ("ready", meta) once the
        answer is under way, ("piece", text) per text piece, then ("done", result) or ("error", ApiError)."""
        from adapters.registry import RegistryError
        from agent.templates import TemplateError
        from feedback.store import FeedbackError, StoreFullError

        from agent.fair import Busy

        try:
            with self.answerer.gate.admit(user["name"]):  # at most KAIZEN_USER_MAX_GENERATIONS per user
                self._run(req, user, stop, emit)
        except Busy as e:
            emit("error", ApiError(429, str(e), type="rate_limit_error", code="user_busy"))
        except ApiError as e:
            emit("error", e)
        except StoreFullError as e:  # logged once by the store; the client gets the sentence
            emit("error", ApiError(507, str(e), type="server_error", code="disk_full"))
        except RegistryError as e:
            emit("error", ApiError(404, str(e), param="model", code="model_not_found"))
        except KeyError as e:  # an adapter that is not (or no longer) attached
            emit("error", ApiError(404, str(e).strip("'\""), param="model", code="model_not_found"))
        except (TemplateError, FeedbackError, ValueError) as e:
            emit("error", ApiError(400, str(e)))
        except Exception as e:  # noqa: BLE001  a bug or an engine failure: logged, reported, never a hang
            log.exception("chat completion failed")
            emit("error", ApiError(500, f"the answer failed: {type(e).__name__}", type="server_error"))
        finally:
            self.end()

    def _run(self, req, user, stop, emit) -> None:
        store, uid = self.store, user["id"]
        turns = schema.stored_turns(req.turns)
        conv, _ = api_store.thread(store, uid, schema.thread_key(req.turns, req.conversation_id),
                                   title=turns[0]["content"][:60])
        adapter = req.adapter
        if adapter == "default":
            from adapters import ab

            adapter = ab.route(self.ab_state.get("experiment"), conv, adapter)
        if adapter not in (None, "default"):
            self._attach(adapter)
        from agent.chat import answer_decoding  # here: importing web.api loads no model library

        decoding = self.answerer.decoding(**req.decoding) if req.decoding else None
        started = time.perf_counter()
        reply = self.answerer.answer(req.history, req.question, template=req.template, rag=req.rag,
                                     adapter=adapter, stop=stop, max_new_tokens=req.max_tokens,
                                     owner=user["name"], decoding=decoding, whole_history=True)
        cid = schema.completion_id()
        emit("ready", {"id": cid, "sources": reply.sources, "conversation": conv})
        stored: dict = {}

        def store_question() -> int:
            """The request's new turns, stored once: the question's id. Called after the first piece is sent,
            so the writes overlap the model's decoding instead of delaying the first token."""
            if "question" not in stored:
                stored["question"] = None  # tried: a failure is not retried
                parent, matched = schema.match_path(store.conversation(conv, uid), turns)
                for t in turns[matched:-1]:
                    parent = store.add_message(conv, t["role"], t["content"], user_id=uid, parent_id=parent,
                                               root=parent is None,
                                               model=schema.CLIENT_MODEL if t["role"] == "assistant" else None)
                if matched < len(turns):
                    parent = store.add_message(conv, "user", req.question, user_id=uid, parent_id=parent,
                                               root=parent is None)
                # else: the same question again at the same place (a regenerate): the answer is a sibling
                stored["question"] = parent
            return stored["question"]

        gen = reply.generation
        message_id = None
        try:
            for piece in gen:
                if piece:
                    emit("piece", piece)
                    store_question()
        finally:
            question_id = store_question()
            if question_id is not None:
                message_id = store.add_message(
                    conv, "assistant", gen.text, user_id=uid, parent_id=question_id, template=reply.template,
                    model=gen.model, adapter=gen.adapter, sources=reply.sources,
                    latency_ms=round((time.perf_counter() - started) * 1000, 1),
                    prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                    decoding=answer_decoding(decoding or self.answerer.decoding(), gen.max_new_tokens),
                    stopped=gen.cancelled, context_messages=reply.context_messages)
                api_store.record_completion(store, cid, message_id, uid)
        emit("done", {
            "id": cid, "text": gen.text, "finish": schema.finish_reason(gen.truncated),
            "usage": schema.usage(gen.prompt_tokens, gen.completion_tokens),
            "kaizen": {"message_id": message_id, "conversation_id": conv, "question_id": question_id,
                       "template": reply.template, "rag": req.rag, "used_rag": reply.used_rag,
                       "sources": reply.sources, "adapter": gen.adapter or "base", "model": gen.model,
                       "first_token_s": gen.first_token_s, "seconds": round(gen.seconds, 4),
                       "cancelled": bool(gen.cancelled), "system_ignored": bool(req.system)},
        })

    # -- feedback ------------------------------------------------------------------------------------
    def feedback(self, body, user: dict) -> dict:
        """Store one feedback event for the caller's completion; ApiError 404 for an unknown (or another
        user's) id and 400 for a refused event: nothing is written either way."""
        from feedback.store import FeedbackError, NotFoundError, StoreFullError

        fb = schema.check_feedback(body, max_comment_chars=self.store.max_comment_chars,
                                   max_edit_chars=self.settings.max_edit_chars)
        store, uid = self.store, user["id"]
        try:
            mid = self._answer_of(fb, uid)
            if fb.kind == "rating":
                if fb.value == 0:
                    event = store.retract(mid, uid)
                else:
                    event = store.rate(mid, uid, fb.value, fb.reasons, fb.comment)
            elif fb.kind == "correction":
                event = store.edit(mid, uid, fb.text)
            else:
                ids = [api_store.message_of(store, c, uid) for c in fb.candidates]
                prompt = store.message(mid, uid)["parent_id"]
                event = store.choose(prompt, uid, ids, mid)
        except NotFoundError as e:
            raise ApiError(404, str(e), param="id", code="not_found") from None
        except StoreFullError as e:
            raise ApiError(507, str(e), type="server_error", code="disk_full") from None
        except FeedbackError as e:
            raise ApiError(400, str(e)) from None
        return {"ok": True, "kind": fb.kind, "id": fb.id or api_store.completion_of(store, mid, uid),
                "message_id": mid, "event_id": event}

    def _answer_of(self, fb: schema.FeedbackRequest, uid: int) -> int:
        """The caller's message the feedback is about: by completion id, or by (conversation_id, answer text)
        within the caller's own thread of that conversation id. NotFoundError otherwise."""
        from feedback.store import NotFoundError

        if fb.id is not None:
            return api_store.message_of(self.store, fb.id, uid)
        key = schema.thread_key([], fb.conversation_id)
        conv = api_store.find_thread(self.store, uid, key)
        mid = None if conv is None else schema.find_answer(self.store.conversation(conv, uid), fb.answer)
        if mid is None:
            raise NotFoundError(f"no answer with that text in conversation {fb.conversation_id!r}")
        return mid

    def stats(self, user: dict, everyone: bool = False) -> dict:
        if everyone:
            if self.store.user(user["id"])["role"] != "admin":
                raise ApiError(403, "only an admin sees everyone's feedback stats", type="permission_error")
            return self.store.stats()
        return self.store.stats(user["id"])
