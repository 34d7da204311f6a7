"""Network silence for an offline app: the environment gradio, huggingface_hub, transformers and chromadb read
when they are imported. Nothing here runs on import; the entry points (app.py, cli/main.py, spaces/space_app.py,
the bench scripts, tests/conftest.py) call `silence()` before those libraries load, and child processes inherit it
(adapters/train.py `run_module` passes ENV explicitly)."""
from __future__ import annotations

import os

ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
}


def silence() -> None:
    """Set each variable unless the caller set it already."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
