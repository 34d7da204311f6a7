from pathlib import Path

import pytest

from agent.settings import Settings


def test_defaults_work_offline(monkeypatch):
    for k in ("KAIZEN_DATA_DIR", "KAIZEN_PORT", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(k, raising=False)
    s = Settings.from_env()
    assert s.data_dir == Path("./data") and s.port == 7860 and s.host == "127.0.0.1"
    assert s.db_path == Path("data/kaizen.db")
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_env_overrides_and_gradio_server_vars(monkeypatch, tmp_path):
    monkeypatch.setenv("KAIZEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KAIZEN_MAX_NEW_TOKENS", "12")
    monkeypatch.setenv("KAIZEN_ADAPT_WATCH", "yes")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    s = Settings.from_env()
    assert (s.data_dir, s.max_new_tokens, s.adapt_watch, s.host, s.port) == (tmp_path, 12, True, "0.0.0.0", 7861)


def test_bad_values_are_clear_errors(monkeypatch):
    monkeypatch.setenv("KAIZEN_PORT", "eighty")
    with pytest.raises(ValueError, match="KAIZEN_PORT"):
        Settings.from_env()
    monkeypatch.setenv("KAIZEN_PORT", "80")
    monkeypatch.setenv("KAIZEN_THREADS", "0")
    with pytest.raises(ValueError, match="THREADS"):
        Settings.from_env()
    monkeypatch.setenv("KAIZEN_THREADS", "2")
    monkeypatch.setenv("KAIZEN_RETRIEVER", "magic")
    with pytest.raises(ValueError, match="KAIZEN_RETRIEVER='magic': use learned, convex or rrf"):
        Settings.from_env()
    monkeypatch.setenv("KAIZEN_RETRIEVER", "convex")
    assert Settings.from_env().retriever == "convex"
    monkeypatch.setenv("KAIZEN_HISTORY", "none")
    with pytest.raises(ValueError, match="KAIZEN_HISTORY='none': use topic or all"):
        Settings.from_env()
    monkeypatch.setenv("KAIZEN_HISTORY", "all")
    assert Settings.from_env().history == "all"
    assert Settings.from_env().background_nice == 19  # training yields the CPU to the chat by default
    for bad in ("20", "-1"):
        monkeypatch.setenv("KAIZEN_BACKGROUND_NICE", bad)
        with pytest.raises(ValueError, match=f"KAIZEN_BACKGROUND_NICE={bad}: use 0"):
            Settings.from_env()
    monkeypatch.setenv("KAIZEN_BACKGROUND_NICE", "0")
    assert Settings.from_env().background_nice == 0
