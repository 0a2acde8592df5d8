#!/usr/bin/env bash
# Build a current apiextensions-apiserver once and cache it, with the etcd it runs against.
#
#   bash scripts/build-apiextensions-apiserver.sh
#
# Why: the CRDs' CEL rules (x-kubernetes-validations) need Kubernetes >= 1.25 to be enforced,
# and a current kube-apiserver cannot be built offline from Debian. The apiextensions-apiserver
# is the part of kube-apiserver that serves CustomResourceDefinitions and custom resources,
# CEL validation included; Debian sid packages its source with every Go library it needs.
#
# Result: ${XDG_CACHE_HOME:-~/.cache}/glmops/apiextensions-apiserver-$VERSION/bin/
# {apiextensions-apiserver, etcd} and a STAMP written last.
#
# How, without installing anything system-wide: a private apt configuration lists Debian sid;
# `apt-get download` fetches golang-k8s-apiextensions-apiserver-dev, golang-$GO_SERIES-go and the
# Go library packages they depend on (about 320 packages, 270 MB), plus sid's etcd-server;
# `dpkg -x` unpacks them into a temporary folder, and the server is built in GOPATH mode from the
# unpacked usr/share/gocode (GO111MODULE=off, GOPROXY=off, CGO_ENABLED=0): about 5 minutes on
# 2 cores, 1.5 GB peak. The temporary folder is removed afterwards; only the two binaries stay.
#
# Idempotent: a complete cache (its STAMP names the current BUILD_RECIPE) skips everything; a
# lock serialises concurrent callers; the cache folder appears by one rename, STAMP inside.
#
# Environment:
#   GLMOPS_CACHE_DIR   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/glmops)
#   GLMOPS_DEBIAN_MIRROR  Debian mirror holding sid (default: the one this machine uses)
#   GLMOPS_BUILD_JOBS  parallel Go build jobs (default: number of CPUs)
set -euo pipefail

VERSION=0.36.4
KUBE_VERSION=1.36.4   # the Kubernetes release this library version belongs to (reported by /version)
GO_SERIES=1.26
SUITE=sid
# Bump when the recipe below changes what is built: an older cache is then rebuilt.
# tests/cel/apiext.py (BUILD_RECIPE) checks the same number.
BUILD_RECIPE=1
CACHE_ROOT="${GLMOPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/glmops}"
DEST="$CACHE_ROOT/apiextensions-apiserver-$VERSION"
BINARIES=(apiextensions-apiserver etcd)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf '[build-apiextensions-apiserver] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cache_complete() {
    local bin
    grep -qx "recipe=$BUILD_RECIPE" "$DEST/STAMP" 2>/dev/null || return 1
    for bin in "${BINARIES[@]}"; do
        [[ -x "$DEST/bin/$bin" ]] || return 1
    done
}

# The Debian mirror this machine already uses.
debian_mirror() {
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
    fi
    printf '%s\n' "${GLMOPS_DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

build() {
    command -v apt-get >/dev/null || die "apt-get is needed to fetch Debian's Go packages"
    command -v dpkg >/dev/null || die "dpkg is needed to unpack Debian's Go packages"
    [[ -r $KEYRING ]] || die "$KEYRING missing (package debian-archive-keyring)"

    mkdir -p "$CACHE_ROOT"
    local work
    work=$(mktemp -d "$CACHE_ROOT/.build-apiextensions-apiserver-$VERSION.XXXXXX")
    # shellcheck disable=SC2064  # expand $work now: it is local
    trap "rm -rf '$work'" EXIT
    local started=$SECONDS

    # A private apt configuration: the machine's own sources, lists and package state stay untouched.
    mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/debs" "$work/root"
    local mirror
    mirror=$(debian_mirror)
    echo "deb [signed-by=$KEYRING] $mirror $SUITE main" >"$work/apt/sources.list"
    : >"$work/apt/status"
    local apt_opts=(
        -o "Dir::Etc::SourceList=$work/apt/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$work/apt/lists"
        -o "Dir::State::status=$work/apt/status"
        -o "Dir::Cache=$work/apt/cache"
        -o "APT::Get::List-Cleanup=0"
        -o "Debug::NoLocking=1"
        -o "APT::Sandbox::User=root"
    )
    log "reading the package index of Debian $SUITE from $mirror"
    apt-get "${apt_opts[@]}" -q update >"$work/apt-update.log" 2>&1 || { cat "$work/apt-update.log" >&2; die "apt-get update of $SUITE failed"; }

    local server_pkg=golang-k8s-apiextensions-apiserver-dev go_pkg="golang-$GO_SERIES-go"
    local candidate
    candidate=$(apt-cache "${apt_opts[@]}" policy "$server_pkg" | awk '/Candidate:/ {print $2}')
    [[ "$candidate" == "$VERSION"-* ]] || die "$SUITE has $server_pkg $candidate, not $VERSION; update VERSION (and BUILD_RECIPE) in $0"

    # Go sources only: with CGO_ENABLED=0 no C library is needed, and the host's libc runs Go.
    local packages
    packages=$(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "$server_pkg" "$go_pkg" \
        | grep -E '^golang-' | sort -u)
    packages+=$'\n'etcd-server
    log "downloading $(wc -l <<<"$packages") packages (Go $GO_SERIES, the Go libraries, etcd-server)"
    # shellcheck disable=SC2086  # one package name per word
    (cd "$work/debs" && apt-get "${apt_opts[@]}" -q download $packages >"$work/apt-download.log" 2>&1) \
        || { tail -n 20 "$work/apt-download.log" >&2; die "apt-get download failed"; }

    log "unpacking $(find "$work/debs" -name '*.deb' | wc -l) packages"
    local deb
    for deb in "$work"/debs/*.deb; do
        dpkg -x "$deb" "$work/root"
    done
    local goroot="$work/root/usr/lib/go-$GO_SERIES"
    local gopath="$work/root/usr/share/gocode"
    [[ -x "$goroot/bin/go" ]] || die "no go binary in $goroot after unpacking $go_pkg"
    [[ -d "$gopath/src/k8s.io/apiextensions-apiserver" ]] || die "$server_pkg holds no source under usr/share/gocode"
    [[ -x "$work/root/usr/bin/etcd" ]] || die "etcd-server holds no usr/bin/etcd"

    local staging="$work/apiextensions-apiserver-$VERSION"
    mkdir -p "$staging/bin"
    local version_pkg=k8s.io/component-base/version
    local ldflags="-s -w -X $version_pkg.gitVersion=v$KUBE_VERSION -X $version_pkg.gitMajor=${KUBE_VERSION%%.*}"
    ldflags+=" -X $version_pkg.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION") -X $version_pkg.gitTreeState=clean"
    log "building k8s.io/apiextensions-apiserver with $("$goroot/bin/go" version | awk '{print $3}') (several minutes)"
    local build_started=$SECONDS
    (
        export GOROOT="$goroot" GOPATH="$gopath" GOCACHE="$work/gocache" GOTMPDIR="$work" HOME="$work"
        export GO111MODULE=off GOPROXY=off GOFLAGS="-p=${GLMOPS_BUILD_JOBS:-$(nproc)}" GOTOOLCHAIN=local CGO_ENABLED=0
        export PATH="$goroot/bin:$PATH"
        cd "$gopath/src/k8s.io/apiextensions-apiserver"
        go build -trimpath -ldflags "$ldflags" -o "$staging/bin/apiextensions-apiserver" k8s.io/apiextensions-apiserver
    )
    log "build took $((SECONDS - build_started)) s"
    cp "$work/root/usr/bin/etcd" "$staging/bin/etcd"
    "$staging/bin/apiextensions-apiserver" --help >/dev/null 2>&1 || die "the built apiextensions-apiserver does not run"
    {
        echo "apiextensions-apiserver=$VERSION"
        echo "recipe=$BUILD_RECIPE"
        echo "suite=$SUITE"
        echo "go=$("$goroot/bin/go" version | awk '{print $3}')"
        echo "etcd=$(dpkg-deb -f "$(ls "$work"/debs/etcd-server_*.deb)" Version)"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "seconds=$((SECONDS - started))"
    } >"$staging/STAMP"

    # Swap folders by renames; a running test server keeps its (deleted) binary open.
    if [[ -e "$DEST" ]]; then
        mv "$DEST" "$work/previous"
    fi
    mv "$staging" "$DEST"
    log "cached in $DEST/bin ($((SECONDS - started)) s in all)"
}

main() {
    if cache_complete; then
        log "cache is complete: $DEST/bin"
        return
    fi
    mkdir -p "$CACHE_ROOT"
    # One build at a time: a second caller waits, then finds the cache complete.
    exec 9>"$CACHE_ROOT/.apiextensions-apiserver-$VERSION.lock"
    flock 9
    if cache_complete; then
        log "cache completed by another build: $DEST/bin"
        return
    fi
    build
}

main "$@"
