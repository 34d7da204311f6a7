"""The one owner of what the model serves: a thread that keeps the model on what the registry says.

    watcher = RegistryWatcher(registry, model, ab_state).start()   # what the app does (one per model)
    registry.promote(v); watcher.sync_now()                        # apply a registry change at once (optional)
    watcher.stop()                                                 # the thread ends

The registry's files (ACTIVE, PIN, AB: adapters/registry.py, adapters/ab.py) are the single source of truth: the
scheduler, the Adapters tab and `kaizen adapters ...` (in any process) only write them. Every `interval_s` the
watcher reads them and, when they differ from the model, attaches and activates the served version (or the base)
and the A/B test's version; `ab_state["experiment"]` is kept to the running A/B test once its version is attached
(None otherwise), for the chat's and the API's routing. A version that fails validation is logged and the model
keeps serving what it served. Nothing else calls `sync_model`, `attach` or a model's `use` / `add_adapter` for the
served model: an explicit adapter a request names is attached through `attach` here too.
"""
from __future__ import annotations

import logging
import threading
import weakref

from adapters import ab
from adapters.registry import Registry, RegistryError, attach, sync_model

log = logging.getLogger(__name__)
THREAD_NAME = "kaizen-registry-sync"
_ERRORS = (RegistryError, OSError, ValueError)


class RegistryWatcher:
    """Polls `registry` and applies it to `model` (see the module docstring). One runs per model: starting a
    watcher stops the one that watched the same model before (a second `build_app` on one answerer)."""

    _running: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its running watcher

    def __init__(self, registry: Registry, model, ab_state: dict | None = None, interval_s: float = 3.0):
        self.registry = registry
        self.model = model
        self.ab_state = {} if ab_state is None else ab_state
        self.interval_s = interval_s
        self.last_error: str | None = None
        self._apply = threading.Lock()  # the thread, sync_now and attach change the model one at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread -------------------------------------------------------------------------------------
    def start(self) -> "RegistryWatcher":
        """Apply the registry once, then keep polling it in a daemon thread named kaizen-registry-sync."""
        if self.alive:
            return self
        try:
            previous = self._running.get(self.model)
        except TypeError:  # a model that cannot be weakly referenced: nothing to replace
            previous = None
        if previous is not None and previous is not self:
            previous.stop()
        self._stop.clear()
        self._sync_logged()
        self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
        self._thread.start()
        try:
            self._running[self.model] = self
        except TypeError:
            pass
        return self

    def stop(self, timeout: float | None = 10) -> None:
        """End the thread (what is served stays as it is)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        try:
            if self._running.get(self.model) is self:
                del self._running[self.model]
        except TypeError:
            pass

    @property
    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sync_logged()
            except Exception:  # noqa: BLE001  the thread outlives anything one poll throws
                log.exception("registry sync failed")

    # -- applying the registry --------------------------------------------------------------------------
    def sync_now(self) -> str | None:
        """Apply the registry now (after a promote / roll-back / pin). Returns the version served (None = the
        base); raises RegistryError when the registry's version cannot be served (the model keeps what it
        served). The A/B test is applied too (its failure is only logged)."""
        with self._apply:
            self._serve()
            self._experiment()
            return self.model.active

    def attach(self, version: str) -> None:
        """Attach a registered version to the model (validated; once) without changing what is served: for a
        request that names an adapter. Raises RegistryError."""
        with self._apply:
            if version not in (getattr(self.model, "adapters", {}) or {}):
                attach(self.registry, self.model, version)

    def _sync_logged(self) -> None:
        with self._apply:
            try:
                self._serve()
                self.last_error = None
            except _ERRORS as e:
                self.last_error = str(e)
                log.warning("cannot serve the registry's version: %s", e)
            self._experiment()

    def _serve(self) -> None:
        want = self.registry.serving()
        if want != self.model.active:
            log.info("serving %s (was %s)", want or "the base model", self.model.active or "the base model")
            sync_model(self.registry, self.model)

    def _experiment(self) -> None:
        try:
            experiment = ab.sync(self.registry, self.model)
        except _ERRORS as e:
            log.warning("A/B test not served: %s", e)
            experiment = None
        if experiment != self.ab_state.get("experiment"):
            log.info("%s", ab.summary(experiment))
            self.ab_state["experiment"] = experiment
