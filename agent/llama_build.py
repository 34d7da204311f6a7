"""Where the llama.cpp build lives (made by `scripts/build-llama-cpp.sh`, run by `make install`).

One folder per machine, shared by every venv: `$KAIZEN_LLAMA_DIR`, default `~/.cache/kaizen/llama.cpp-<version>`:
    bin/   llama-server, llama-bench, libllama.so, libggml*.so   (one build, CPU-only: AVX2 and the AVX-512 /
           VNNI extensions of the CPU it was built on, no AMX; libggml-blas.so when built with OpenBLAS, the
           default: prefill through OpenBLAS's sgemm)
           .isa: the /proc/cpuinfo flags the build needs (a CPU without one of them is refused in words)
           .patched-<sha>: built with PATCHES applied (its samplers see the answer only, not the prompt; its
                           prefill's flash attention skips a causal mask's hidden tiles before converting them)
    src/   the llama.cpp tree they were built from (its `convert_lora_to_gguf.py` / `convert_hf_to_gguf.py`)
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python sdist whose vendored llama.cpp is built
# The patches scripts/build-llama-cpp.sh applies, in its order (each file says why): llama-server's samplers see the
# answer only; the CPU flash attention of a prefill skips a causal mask's hidden tiles before converting them.
PATCHES = tuple(Path(__file__).resolve().parents[1] / "scripts" / name for name in (
    "llama-server-samplers-see-the-answer-only.patch", "llama-cpp-flash-attn-prefill.patch"))


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


def has_blas(bin_dir: Path | None = None) -> bool:
    """Whether the build carries ggml's BLAS backend (OpenBLAS multiplies batches of 32+ tokens: prefill)."""
    return ((bin_dir or llama_dir() / "bin") / "libggml-blas.so").exists()


# With the BLAS backend, ggml's OpenMP threads and OpenBLAS's own threads take turns on the same cores, and each
# side's idle threads spin by default while the other works: prefill then runs *slower* than without BLAS. OpenBLAS
# threads that sleep at once, ggml's that spin 30,000 rounds instead of 300,000 (1,000 prefills faster still but
# costs ~10% of decode speed after a long prompt), and 1,024-token micro-batches (one sgemm per weight for a RAG
# prompt, not two) make prefill ~2x the build without BLAS (README, measurements). Decoding (batches under
# 32 tokens) stays on ggml's kernels. The environment only: a setting the user exports wins.
BLAS_ENV = {"GOMP_SPINCOUNT": "30000", "OPENBLAS_THREAD_TIMEOUT": "4"}
BLAS_ARGS = ["-ub", "1024"]


def server_args(bin_dir: Path) -> list[str]:
    """llama-server arguments for the build in `bin_dir` (the user's KAIZEN_LLAMA_ARGS come after: they win)."""
    return list(BLAS_ARGS) if has_blas(bin_dir) else []


def server_env(bin_dir: Path, environ: dict[str, str]) -> dict[str, str]:
    """llama-server's environment: `environ` over BLAS_ENV (with BLAS); LD_LIBRARY_PATH the build's own."""
    return {**(BLAS_ENV if has_blas(bin_dir) else {}), **environ, "LD_LIBRARY_PATH": str(bin_dir)}


def patch_stamp() -> Path:
    """The file scripts/build-llama-cpp.sh leaves in bin/ once the build carries this checkout's PATCHES (the same
    name the script derives: the sha256 of the patches in a row, 16 hex digits)."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in PATCHES)).hexdigest()[:16]
    return llama_dir() / "bin" / f".patched-{digest}"


def patched() -> bool:
    return patch_stamp().exists()


def cpu_flags() -> set[str]:
    """This CPU's flags as /proc/cpuinfo lists them (empty where there is none: nothing is then refused)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), "").split())


def missing_isa(bin_dir: Path | None = None, flags: set[str] | None = None) -> list[str]:
    """The extensions the build in `bin_dir` was compiled for that this CPU lacks (bin/.isa, written by
    scripts/build-llama-cpp.sh; a build without the file is the portable one)."""
    isa = (bin_dir or llama_dir() / "bin") / ".isa"
    flags = cpu_flags() if flags is None else flags
    if not isa.is_file() or not flags:
        return []
    return [f for f in isa.read_text().split() if f not in flags]


def require() -> Path:
    """The build folder, or a clear error saying how to make it."""
    if not available():
        raise BuildMissing(
            f"llama.cpp is not built in {llama_dir()} (llama-server or convert_lora_to_gguf.py missing): run "
            "`make install` (or scripts/build-llama-cpp.sh), or set KAIZEN_ENGINE=transformers")
    if not patched():
        raise BuildMissing(
            f"llama.cpp in {llama_dir()} was built without this checkout's patches "
            f"({', '.join(p.name for p in PATCHES)}: without the first, its samplers would punish answers for "
            "quoting their sources): run `make install` (or scripts/build-llama-cpp.sh), which patches it and "
            "rebuilds what changed")
    missing = missing_isa()
    if missing:
        raise BuildMissing(
            f"llama.cpp in {llama_dir()} was built for a CPU with {', '.join(missing)}, which this one lacks (its "
            "code would die with SIGILL): run `PY=.venv/bin/python scripts/build-llama-cpp.sh`, which rebuilds it "
            "for this CPU, or build with KAIZEN_LLAMA_ISA=portable for a cache several CPUs share")
    return llama_dir()
