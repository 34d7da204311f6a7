#!/usr/bin/env bash
# Build llama.cpp (the shared libraries and `llama-server`) once per machine, CPU-only and portable.
#
# The source is the llama.cpp tree vendored in the llama-cpp-python sdist on PyPI (the only download), so the
# compiled library, the server and the LoRA converter (`convert_lora_to_gguf.py`) all come from one tree.
# The build lands in $KAIZEN_LLAMA_DIR (default ~/.cache/kaizen/llama.cpp-<version>) and is reused by every venv
# on the machine; delete that folder to rebuild.
#   GGML_NATIVE=OFF   no -march=native, so no AMX code (the AMX path segfaults, or dies with SIGILL, on some VMs):
#                     AVX2, plus the AVX-512 (F/CD/VL/DQ/BW, VBMI, VNNI) and AVX-VNNI extensions this CPU lists in
#                     /proc/cpuinfo (KAIZEN_LLAMA_ISA=portable: AVX2 only, for a cache shared by several CPUs).
#                     Batched decoding's int8 dot products use VNNI: 8 answers at once 6-24% faster here, one alone the same.
#                     bin/.isa names the extensions built for: on another CPU the app refuses the build in words,
#                     and this script rebuilds it for that CPU. Every AVX-512 / VNNI / AMX option is given (OFF
#                     unless this CPU has it): a cached cmake configuration keeps any earlier -D.
#   LLAMA_USE_PREBUILT_UI=OFF / LLAMA_BUILD_UI=OFF   the server's web UI is not downloaded
#   GGML_BLAS=ON      when OpenBLAS is installed (`make install` installs Debian's libopenblas-dev where it can;
#                     KAIZEN_LLAMA_BLAS=0 builds without it): prompts of 32+ tokens are multiplied by OpenBLAS's
#                     sgemm, whose kernels use the CPU's widest vectors, so prefill is ~2x the portable AVX2
#                     build's (llama-bench pp1000: 600 vs 260 tok/s with AVX-512 kernels, 520 with OpenBLAS held to
#                     its AVX2 ones); decoding stays on ggml's own kernels.
# Two patches (scripts/*.patch, each says why): llama-server's samplers (DRY, the repeat penalties) see the answer
# only, not the prompt, so a RAG answer may quote its sources; the CPU flash attention of a prefill skips a causal
# mask's hidden tiles before converting them (~12% faster 1,000-token prefill). A build without them (an older
# cache) is patched and rebuilt (the changed files recompile).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DIR="${KAIZEN_LLAMA_DIR:-$HOME/.cache/kaizen/llama.cpp-$VERSION}"
PY="${PY:-python3}"
JOBS="${JOBS:-$(nproc)}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# agent/llama_build.py PATCHES lists the same files in the same order: the stamp is the sha256 of them in a row.
PATCHES=("$HERE/llama-server-samplers-see-the-answer-only.patch" "$HERE/llama-cpp-flash-attn-prefill.patch")
PATCHED="$DIR/bin/.patched-$(cat "${PATCHES[@]}" | sha256sum | cut -c1-16)"
# The CPU's vector extensions ggml is compiled for beyond AVX2: cmake options, and the /proc/cpuinfo flags they need.
ISA_ARGS=() ISA_NEEDS=()
case "${KAIZEN_LLAMA_ISA:-native}" in native|portable) ;;
  *) echo "KAIZEN_LLAMA_ISA=$KAIZEN_LLAMA_ISA: use native (this CPU's extensions) or portable (AVX2 alone)" >&2; exit 2;;
esac
if [[ "${KAIZEN_LLAMA_ISA:-native}" != portable ]]; then
  CPU=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
  has() { for f in "$@"; do [[ $CPU == *" $f "* ]] || return 1; done; }
  if has avx512f avx512cd avx512vl avx512dq avx512bw; then
    ISA_ARGS+=(-DGGML_AVX512=ON); ISA_NEEDS+=(avx512f avx512cd avx512vl avx512dq avx512bw)
    if has avx512vbmi; then ISA_ARGS+=(-DGGML_AVX512_VBMI=ON); ISA_NEEDS+=(avx512vbmi); fi
    if has avx512_vnni; then ISA_ARGS+=(-DGGML_AVX512_VNNI=ON); ISA_NEEDS+=(avx512_vnni); fi
  fi
  if has avx_vnni; then ISA_ARGS+=(-DGGML_AVX_VNNI=ON); ISA_NEEDS+=(avx_vnni); fi
fi
ISA="avx2 ${ISA_NEEDS[*]}"; ISA="${ISA% }"
BLAS=OFF HAS_BLAS=OFF
if [[ "${KAIZEN_LLAMA_BLAS:-1}" == 1 ]]; then
  if pkg-config --exists openblas 2>/dev/null; then BLAS=ON
  else echo "llama.cpp: KAIZEN_LLAMA_BLAS=1 but pkg-config finds no OpenBLAS: building without it" >&2; fi
fi
if [[ -f "$DIR/bin/libggml-blas.so" ]]; then HAS_BLAS=ON; fi
if [[ -x "$DIR/bin/llama-server" && -f "$DIR/bin/libllama.so" && -f "$DIR/src/convert_lora_to_gguf.py" \
      && -f "$PATCHED" && $BLAS == "$HAS_BLAS" && "$(cat "$DIR/bin/.isa" 2>/dev/null)" == "$ISA" ]]; then
  echo "llama.cpp: using the build in $DIR"; exit 0
fi
mkdir -p "$DIR"
start=$(date +%s)
if [[ ! -f "$DIR/src/CMakeLists.txt" ]]; then
  tmp="$(mktemp -d)"
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp"
  mkdir "$tmp/x" && tar xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp/x"
  rm -rf "$DIR/src" "$DIR/python"
  mv "$tmp"/x/llama_cpp_python-*/vendor/llama.cpp "$DIR/src"
  mv "$tmp"/x/llama_cpp_python-* "$DIR/python"   # the bindings' sources, installed without a second compile
  rm -rf "$tmp"
fi
# git apply, run from $DIR: outside a repository it works like patch(1) (which a machine may lack), and src/
# holds a stale .git file from the sdist that makes it fail inside. Applied, or already applied.
apply_patch() { (cd "$DIR" && git apply --directory=src "$@"); }
for patch in "${PATCHES[@]}"; do
  if apply_patch --check "$patch" >/dev/null 2>&1; then
    apply_patch "$patch"
  elif ! apply_patch -R --check "$patch" >/dev/null 2>&1; then
    echo "llama.cpp: $patch does not apply to $DIR/src" >&2; exit 1
  fi
done
# A build folder configured elsewhere (the cache moved or copied) makes cmake refuse it: start that one afresh.
if [[ -f "$DIR/build/CMakeCache.txt" ]] && ! grep -qxF "# For build in directory: $DIR/build" "$DIR/build/CMakeCache.txt"; then
  rm -rf "$DIR/build"
fi
cmake -S "$DIR/src" -B "$DIR/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN' \
  -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
  -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  "${ISA_ARGS[@]}" -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DGGML_BLAS=$BLAS -DGGML_BLAS_VENDOR=OpenBLAS >"$DIR/cmake.log"
cmake --build "$DIR/build" -j "$JOBS" --target llama-server llama-bench >"$DIR/build.log"
[[ $BLAS == ON ]] || rm -f "$DIR"/build/bin/libggml-blas.so*  # left by an earlier build with it
rm -rf "$DIR/bin"; mkdir -p "$DIR/bin"
cp -a "$DIR"/build/bin/llama-server "$DIR"/build/bin/llama-bench "$DIR"/build/bin/*.so* "$DIR/bin/"
touch "$PATCHED"
echo "$ISA" > "$DIR/bin/.isa"
echo "llama.cpp $VERSION built in $(( $(date +%s) - start )) s (BLAS $BLAS; $ISA): $DIR/bin"
