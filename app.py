"""Kaizen Chat — the app: builds the services (the store, the answerer, the registry and its watcher, the scheduler,
the OpenAI-compatible API) and hands them to the UI (ui/app.py). `python app.py` or `kaizen serve` runs it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from agent.offline import silence

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from adapters.registry import Registry  # noqa: E402
from adapters.scheduler import Scheduler  # noqa: E402
from adapters.watcher import RegistryWatcher  # noqa: E402
from agent.chat import Answerer  # noqa: E402
from agent.engine import describe  # noqa: E402
from agent.settings import Settings  # noqa: E402
from ui.app import build_ui, launch_kwargs  # noqa: E402

log = logging.getLogger("kaizen.app")


@dataclass
class Services:
    """What the app is made of, built once: the UI and the API share every one of them."""

    settings: Settings
    store: object  # feedback.store.Store
    answerer: Answerer
    registry: Registry
    watcher: RegistryWatcher  # the one owner of what the model serves
    scheduler: Scheduler
    api: object  # web.api.KaizenAPI, mounted beside the UI by launch_kwargs
    ab_state: dict = field(default_factory=dict)


def build_services(settings: Settings | None = None, answerer: Answerer | None = None, store=None,
                   registry=None, scheduler=None) -> Services:
    settings = settings or Settings.from_env()
    if store is None:
        from feedback.integrity import check_database
        from feedback.store import Store

        check_database(settings.db_path)  # a corrupt kaizen.db is refused before anything writes to it
        store = Store.from_settings(settings)
    answerer = answerer or Answerer.from_settings(settings)
    log.info("answering with %s", describe(answerer.model))
    registry = registry or Registry(settings)
    ab_state: dict = {}
    watcher = RegistryWatcher(registry, answerer.model, ab_state).start()
    from web.api import KaizenAPI

    api = KaizenAPI(settings, answerer, store, registry, ab_state, watcher=watcher)
    if scheduler is None:
        scheduler = Scheduler(settings, on_promote=lambda version, folder: watcher.sync_now(), store=store)
        if settings.adapt_watch:
            scheduler.start()
    return Services(settings, store, answerer, registry, watcher, scheduler, api, ab_state)


def build_app(settings: Settings | None = None, answerer: Answerer | None = None, store=None,
              registry=None, scheduler=None):
    """The app's Blocks (not launched): the services, then the UI over them."""
    services = build_services(settings, answerer, store, registry, scheduler)
    demo = build_ui(services)
    demo.kaizen_api = services.api
    demo.kaizen_watcher = services.watcher
    close = demo.close

    def close_app(*args, **kwargs):  # closing the app ends its registry watcher and its scheduler
        services.watcher.stop()
        services.scheduler.stop()
        return close(*args, **kwargs)

    demo.close = close_app
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env()
    from feedback.integrity import CorruptStoreError

    try:
        demo = build_app(settings)
    except CorruptStoreError as e:
        log.error("%s", e)
        raise SystemExit(2) from None
    demo.launch(**launch_kwargs(settings, demo))


if __name__ == "__main__":
    main()
