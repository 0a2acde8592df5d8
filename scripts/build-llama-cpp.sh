#!/usr/bin/env bash
# Build llama.cpp's tools and the llama-cpp-python wheel once, from one sdist, and cache them.
#
#   bash scripts/build-llama-cpp.sh [--venv PATH] [--no-wheel] [--no-tools]
#
# Both come from the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist on PyPI (the same tree
# gives the GGUF converter and gguf-py, so converter, quantizer, server and the Python binding
# always agree on the GGUF format):
#   - llama-quantize and llama-server, built with CMake, in
#       $CACHE_ROOT/llama.cpp-$LLAMA_CPP_PYTHON_VERSION/bin/
#   - the llama-cpp-python wheel (CMAKE_ARGS=-DGGML_NATIVE=off, so it runs on any x86-64), in
#       $CACHE_ROOT/wheels/
#     and installed into the venv given with --venv (default: .venv of this repository) when that
#     venv does not have this version yet.
#
# Idempotent: a complete cache (its STAMP file exists) skips the build, so a warm run takes
# seconds. Each build goes into a temporary folder that is renamed into place and stamped at the
# end, so a half-built cache is never taken for a complete one; a lock serialises concurrent runs.
#
# Environment:
#   GLMOPS_CACHE_DIR       cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/glmops)
#   GLMOPS_LLAMA_CPP_SRC   an unpacked llama.cpp tree to build instead of the sdist's (its parent's
#                          parent must be the llama-cpp-python sdist root for the wheel)
#   GLMOPS_BUILD_JOBS      parallel compile jobs (default 2)
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${GLMOPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/glmops}"
DEST="$CACHE_ROOT/llama.cpp-$LLAMA_CPP_PYTHON_VERSION"
WHEEL_DIR="$CACHE_ROOT/wheels"
JOBS="${GLMOPS_BUILD_JOBS:-2}"
TOOLS=(llama-quantize llama-server)
VENV="$REPO_ROOT/.venv"
BUILD_WHEEL=1
BUILD_TOOLS=1

log() { printf '[build-llama-cpp] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The compilers come from Debian when a fresh machine lacks them.
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
    log "installing cmake and g++ from Debian"
    if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends cmake g++ make
fi

while [[ $# -gt 0 ]]; do
    case "$1" in
        --venv) [[ $# -ge 2 ]] || die "--venv needs a path"; VENV="$2"; shift 2 ;;
        --no-wheel) BUILD_WHEEL=0; shift ;;
        --no-tools) BUILD_TOOLS=0; shift ;;
        -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

PY="$VENV/bin/python"
[[ -x "$PY" ]] || die "no Python at $PY: create the venv first (make venv) or pass --venv PATH"

mkdir -p "$CACHE_ROOT" "$WHEEL_DIR"
exec 9>"$CACHE_ROOT/.llama.cpp-$LLAMA_CPP_PYTHON_VERSION.lock"
flock 9

# The llama.cpp tree inside the sdist; downloaded and cached by glmops_trainer.llamacpp_src.
source_dir() {
    if [[ -n "${GLMOPS_LLAMA_CPP_SRC:-}" ]]; then
        printf '%s\n' "$GLMOPS_LLAMA_CPP_SRC"
    else
        "$PY" -c 'from glmops_trainer.llamacpp_src import llama_cpp_source_dir; print(llama_cpp_source_dir())'
    fi
}

tools_complete() {
    [[ -f "$DEST/STAMP" ]] || return 1
    local tool
    for tool in "${TOOLS[@]}"; do [[ -x "$DEST/bin/$tool" ]] || return 1; done
}

build_tools() {
    local src="$1" tmp start
    start=$SECONDS
    # Leftovers of an interrupted build are never reused: they may be half written.
    rm -rf "$CACHE_ROOT"/.build-llama.cpp-"$LLAMA_CPP_PYTHON_VERSION".*
    tmp="$(mktemp -d "$CACHE_ROOT/.build-llama.cpp-$LLAMA_CPP_PYTHON_VERSION.XXXXXX")"
    log "building ${TOOLS[*]} from $src in $tmp (-j$JOBS)"
    # Static libraries so the binaries can be copied anywhere; no native CPU tuning so the cache
    # can move between machines; no curl (models are always local files here).
    nice -n 10 cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$tmp/cmake.log" 2>&1 \
        || { tail -30 "$tmp/cmake.log" >&2; die "cmake configure failed (log above)"; }
    nice -n 10 cmake --build "$tmp/build" --config Release -j "$JOBS" --target "${TOOLS[@]}" \
        >"$tmp/build.log" 2>&1 || { tail -40 "$tmp/build.log" >&2; die "build failed (log above)"; }
    mkdir -p "$tmp/dest/bin"
    local tool
    for tool in "${TOOLS[@]}"; do cp "$tmp/build/bin/$tool" "$tmp/dest/bin/"; done
    rm -rf "$DEST"
    mv "$tmp/dest" "$DEST"
    printf 'llama-cpp-python %s\nsource %s\nbuilt %s in %ss\n' "$LLAMA_CPP_PYTHON_VERSION" "$src" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((SECONDS - start))" >"$DEST/STAMP"
    rm -rf "$tmp"
    log "tools ready in $DEST/bin ($((SECONDS - start))s)"
}

cached_wheel() {
    compgen -G "$WHEEL_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION-*.whl" | head -n 1
}

build_wheel() {
    local sdist_root="$1" tmp start
    start=$SECONDS
    rm -rf "$WHEEL_DIR"/.build-wheel.*
    tmp="$(mktemp -d "$WHEEL_DIR/.build-wheel.XXXXXX")"
    log "building the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION wheel from $sdist_root"
    # GGML_NATIVE=off: the wheel is cached and shared, so it must not assume this CPU's features.
    CMAKE_ARGS="-DGGML_NATIVE=off" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
        nice -n 10 "$PY" -m pip wheel --no-deps --wheel-dir "$tmp" "$sdist_root" >"$tmp/pip.log" 2>&1 \
        || { tail -40 "$tmp/pip.log" >&2; die "wheel build failed (log above)"; }
    local built
    built="$(compgen -G "$tmp/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION-*.whl" | head -n 1)" \
        || die "pip reported success but left no wheel in $tmp"
    mv "$built" "$WHEEL_DIR/"
    rm -rf "$tmp"
    log "wheel ready in $WHEEL_DIR ($((SECONDS - start))s)"
}

venv_has_binding() {
    "$PY" - "$LLAMA_CPP_PYTHON_VERSION" <<'EOF' >/dev/null 2>&1
import importlib.metadata, sys
sys.exit(0 if importlib.metadata.version("llama_cpp_python") == sys.argv[1] else 1)
EOF
}

need_src=0
if [[ $BUILD_TOOLS -eq 1 ]] && ! tools_complete; then need_src=1; fi
if [[ $BUILD_WHEEL -eq 1 ]] && [[ -z "$(cached_wheel || true)" ]]; then need_src=1; fi

SRC=""
if [[ $need_src -eq 1 ]]; then
    SRC="$(source_dir)" || die "could not get the llama.cpp source tree (glmops_trainer.llamacpp_src)"
    [[ -f "$SRC/CMakeLists.txt" && -f "$SRC/convert_hf_to_gguf.py" ]] \
        || die "$SRC is not a llama.cpp tree (no CMakeLists.txt / convert_hf_to_gguf.py)"
fi

if [[ $BUILD_TOOLS -eq 1 ]]; then
    if tools_complete; then log "tools cached in $DEST/bin"; else build_tools "$SRC"; fi
fi

if [[ $BUILD_WHEEL -eq 1 ]]; then
    if [[ -z "$(cached_wheel || true)" ]]; then
        sdist_root="$(cd "$SRC/../.." && pwd)"
        [[ -f "$sdist_root/pyproject.toml" && -d "$sdist_root/llama_cpp" ]] \
            || die "$sdist_root is not the llama-cpp-python sdist root (no pyproject.toml / llama_cpp/)"
        build_wheel "$sdist_root"
    else
        log "wheel cached in $WHEEL_DIR"
    fi
    if venv_has_binding; then
        log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION already installed in $VENV"
    else
        wheel="$(cached_wheel)"
        log "installing $(basename "$wheel") into $VENV"
        "$PY" -m pip install --quiet "$wheel"
    fi
fi
