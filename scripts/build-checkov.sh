#!/usr/bin/env bash
# Install checkov (the IaC scanner the security tests run over the chart and the planner's
# objects) once, in a Python environment of its own, and cache it.
#
#   bash scripts/build-checkov.sh [--python PYTHON]
#
# checkov pins boto3/botocore and other libraries that the project's dev extra pins differently
# (moto, aiobotocore), so it cannot share .venv. The environment is a venv at
# $CACHE_ROOT/checkov-$CHECKOV_VERSION/; tests run $CACHE_ROOT/checkov-$CHECKOV_VERSION/bin/checkov.
#
# Idempotent: a complete cache (its STAMP file exists) is left alone. The venv is built in a
# temporary folder, renamed into place and stamped at the end; a lock serialises concurrent runs.
#
# Environment:
#   GLMOPS_CACHE_DIR   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/glmops)
set -euo pipefail

CHECKOV_VERSION=3.3.30
CACHE_ROOT="${GLMOPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/glmops}"
DEST="$CACHE_ROOT/checkov-$CHECKOV_VERSION"
PYTHON=python3.11

log() { printf '[build-checkov] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; PYTHON="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

complete() { [[ -f "$DEST/STAMP" && -x "$DEST/bin/checkov" ]]; }
if complete; then log "checkov $CHECKOV_VERSION cached in $DEST"; exit 0; fi

command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH (pass --python PYTHON)"
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.checkov-$CHECKOV_VERSION.lock"
flock 9
if complete; then log "checkov $CHECKOV_VERSION cached in $DEST (built meanwhile)"; exit 0; fi

rm -rf "$CACHE_ROOT"/.build-checkov-"$CHECKOV_VERSION".*
tmp="$(mktemp -d "$CACHE_ROOT/.build-checkov-$CHECKOV_VERSION.XXXXXX")"
log "creating the environment in $tmp"
"$PYTHON" -m venv "$tmp/venv" || die "$PYTHON -m venv failed (Debian: apt-get install python3-venv)"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >"$tmp/pip.log" 2>&1 \
    || { tail -40 "$tmp/pip.log" >&2; die "pip install checkov failed (log above)"; }
"$tmp/venv/bin/checkov" --version >/dev/null 2>&1 || die "the new checkov does not run"
# A venv's scripts name its interpreter by absolute path: move it, then rewrite those paths.
rm -rf "$DEST"
mv "$tmp/venv" "$DEST"
grep -rlI --null "$tmp/venv" "$DEST/bin" | xargs -0 -r sed -i "s|$tmp/venv|$DEST|g"
"$DEST/bin/checkov" --version >/dev/null 2>&1 || die "checkov does not run after the move"
rm -rf "$tmp"
date -u +%Y-%m-%dT%H:%M:%SZ >"$DEST/STAMP"
log "checkov $CHECKOV_VERSION ready in $DEST"
