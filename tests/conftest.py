"""Shared fixtures. The real default model is converted once per test session; tests that load it are `slow`.

`slow` means slow: a test that starts a child process or a server, trains, drives Chromium or loads the real
model (transformers or llama.cpp) carries the mark, so that `pytest -m "not slow"` is the quick check. Tests
marked `browser` and tests that use a fixture in SLOW_FIXTURES are marked here, whatever their module says."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from agent.settings import DEFAULT_BASE, Settings  # noqa: E402,F401
from agent.llama_server import free_port  # noqa: E402,F401  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
# What a test asks wherever the real model must answer "Paris". "What is the capital of France?" was asked before:
# the model's first token there is a near-tie ("The" over "L" by 0.11 nats in transformers fp32, 0.03 on the AVX2
# llama.cpp build, and without a system prompt 0.001), so a build's rounding decided it: the AVX-512 build answered
# "L'Alma, la France, la France..." (session 27). This one leads by 0.2-1.8 nats at every token up to "Paris" in
# transformers, the AVX2 and the AVX-512 builds, with the plain, concise or no system prompt. The plain template's
# system prompt is "You are a helpful AI assistant named Kaizen." since session 28 (bench/system_prompts.py): the first
# token of both questions leads by more there (1.42 and 0.49 nats in transformers fp32, from 0.48 and 0.11).
PARIS_QUESTION = "Name the capital of France."
SHARED_DATA = ROOT.parent / "shared" / "data"

# Fixtures that load the real model or start the app: every test that uses one (even through another fixture) is slow.
SLOW_FIXTURES = {"chat_model", "app_server"}


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: the marks added here count
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("browser") or SLOW_FIXTURES & set(item.fixturenames):
            if not item.get_closest_marker("slow"):
                item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    """The bundled SmolLM2-135M-Instruct, converted from GGUF to safetensors once per session."""
    from agent.model import convert_bundled

    cache = os.environ.get("KAIZEN_TEST_MODELS_DIR")
    models = Path(cache) if cache else tmp_path_factory.mktemp("models")
    return convert_bundled(models)


@pytest.fixture
def settings(tmp_path, base_model_dir) -> Settings:
    """Settings on a fresh data dir, with the real default model (already converted)."""
    return Settings(data_dir=tmp_path / "data", base_model=str(base_model_dir), max_new_tokens=48)


@pytest.fixture(scope="session")
def chat_model(base_model_dir):
    """One real ChatModel for the session (read-only use: tests must not leave adapters attached)."""
    from agent.model import ChatModel

    s = Settings(base_model=str(base_model_dir))
    return ChatModel.from_settings(s)


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled model's tokenizer, read from the GGUF's metadata: the same one `convert_gguf` saves beside the
    weights, without converting them (that is `base_model_dir`'s job, ~70 s on a fresh machine)."""
    from transformers import AutoTokenizer

    from agent.model import bundled_gguf

    gguf = bundled_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama with the real tokenizer, saved as a base-model folder once per session (read-only use)."""
    from tests.train_support import save_tiny_base

    return save_tiny_base(tmp_path_factory.mktemp("tiny-base"), tokenizer)


@pytest.fixture
def tiny_llama(tokenizer):
    """A tiny random Llama built in code (no checkpoint) with the real tokenizer: for plumbing tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (CI lays ../shared beside the repo)")
    return SHARED_DATA


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """Terminate a server the test started; kill it if it is still there after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def running_app(data: Path, base_model_dir: Path, argv: list[str] | None = None, cwd: Path = ROOT, **env_extra):
    """Start `kaizen serve` (or `argv` in `cwd`: the Space bundle's entry) as a subprocess on a free loopback port;
    yields a dict with url, data_dir, db."""
    port = free_port()
    env = {**os.environ, "KAIZEN_DATA_DIR": str(data), "KAIZEN_BASE_MODEL": str(base_model_dir),
           "KAIZEN_PORT": str(port), "KAIZEN_HOST": "127.0.0.1", "KAIZEN_MAX_NEW_TOKENS": "40", **env_extra}
    env.pop("GRADIO_SERVER_PORT", None)
    env.pop("GRADIO_SERVER_NAME", None)
    data.mkdir(parents=True, exist_ok=True)
    log = open(data / "server.log", "w")
    proc = subprocess.Popen(argv or [sys.executable, "-m", "cli.main", "serve"], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited: {(data / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("the app did not start in 300 s")
                time.sleep(1)
        yield {"url": url, "data_dir": data, "db": data / "kaizen.db", "proc": proc}
    finally:
        stop_process(proc, 20)
        log.close()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory, base_model_dir):
    """The real app (`kaizen serve`) as a subprocess on a free loopback port, with its own data dir."""
    with running_app(tmp_path_factory.mktemp("appdata"), base_model_dir) as server:
        yield server
