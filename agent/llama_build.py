"""Where the llama.cpp build lives (made by `scripts/build-llama-cpp.sh`, run by `make install`).

One folder per machine, shared by every venv: `$KAIZEN_LLAMA_DIR`, default `~/.cache/kaizen/llama.cpp-<version>`:
    bin/   llama-server, llama-bench, libllama.so, libggml*.so   (one build, CPU-only, portable AVX2)
           .patched-<sha>: built with PATCH applied (its samplers see the answer only, not the prompt)
    src/   the llama.cpp tree they were built from (its `convert_lora_to_gguf.py` / `convert_hf_to_gguf.py`)
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python sdist whose vendored llama.cpp is built
PATCH = Path(__file__).resolve().parents[1] / "scripts" / "llama-server-samplers-see-the-answer-only.patch"


class BuildMissing(RuntimeError):
    pass


def llama_dir() -> Path:
    return Path(os.environ.get("KAIZEN_LLAMA_DIR") or Path.home() / ".cache" / "kaizen" / f"llama.cpp-{VERSION}")


def server_binary() -> Path:
    return llama_dir() / "bin" / "llama-server"


def converter(name: str = "convert_lora_to_gguf.py") -> Path:
    return llama_dir() / "src" / name


def available() -> bool:
    return server_binary().exists() and converter().exists()


def patch_stamp() -> Path:
    """The file scripts/build-llama-cpp.sh leaves in bin/ once the build carries this checkout's PATCH (the same
    name the script derives: the patch's sha256, 16 hex digits)."""
    return llama_dir() / "bin" / f".patched-{hashlib.sha256(PATCH.read_bytes()).hexdigest()[:16]}"


def patched() -> bool:
    return patch_stamp().exists()


def require() -> Path:
    """The build folder, or a clear error saying how to make it."""
    if not available():
        raise BuildMissing(
            f"llama.cpp is not built in {llama_dir()} (llama-server or convert_lora_to_gguf.py missing): run "
            "`make install` (or scripts/build-llama-cpp.sh), or set KAIZEN_ENGINE=transformers")
    if not patched():
        raise BuildMissing(
            f"llama-server in {llama_dir()} was built without {PATCH.name} (its samplers would punish answers for "
            "quoting their sources): run `make install` (or scripts/build-llama-cpp.sh), which patches it and "
            "rebuilds the server")
    return llama_dir()
