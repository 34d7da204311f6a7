#!/usr/bin/env bash
# Install llama-cpp-python (the Python bindings) into the venv without compiling llama.cpp a second time: the
# package is installed with LLAMA_BUILD=OFF and pointed at the libraries scripts/build-llama-cpp.sh built.
# Used by the parity check (teacher-forced logits) and by bench/chat_speed.py (the raw ceiling).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DIR="${KAIZEN_LLAMA_DIR:-$HOME/.cache/kaizen/llama.cpp-$VERSION}"
PY="${PY:-python3}"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [[ ! -f "$SITE/llama_cpp/__init__.py" ]]; then
  "$PY" -m pip install -q "diskcache>=5.6.1"  # its one dependency this venv lacks
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$PY" -m pip install -q --no-deps "$DIR/python"
fi
# Links to the build's libraries, renewed each time: a rebuild may add one (libggml-blas.so) or drop one.
mkdir -p "$SITE/llama_cpp/lib"
find "$SITE/llama_cpp/lib" -maxdepth 1 -type l -delete
ln -sf "$DIR"/bin/*.so* "$SITE/llama_cpp/lib/"
"$PY" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__, "on", llama_cpp.llama_cpp._base_path)'
