#!/usr/bin/env bash
# Build the local control plane's binaries once and cache them.
#
#   bash scripts/build-kubernetes.sh
#
# Result: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl of Kubernetes
# $K8S_VERSION in ${XDG_CACHE_HOME:-~/.cache}/glmops/k8s-$K8S_VERSION/bin, plus etcd from
# Debian's etcd-server package. The source is Debian bookworm's `kubernetes` source package
# (1.20.5+really1.20.2: the upstream 1.20.2 tree with vendor/), built with Debian's Go
# (1.19) and CGO_ENABLED=0; about 10 minutes on 2 cores.
#
# What the build changes in the source, and why:
#   - Debian's patches of the package (kubectl output escaping, CVE-2021-25743) are applied;
#     when they do not apply, the plain upstream tarball is used.
#   - vendor/github.com/modern-go/reflect2 1.0.1 is replaced by Debian's 1.0.2: 1.0.1 crashes
#     the API server (fault in mapiterinit) when built with Go >= 1.18.
#   - the zero-value check of the OpenAPI type validator is removed (kubernetes/kube-openapi#230,
#     kubernetes/kubernetes#99804): built with Go >= 1.16 it takes "" for null, so the API server
#     rejects custom resources holding an empty string and CRDs with `default: ""`.
#
# Idempotent: a complete cache (its STAMP names the current BUILD_RECIPE) skips the build;
# etcd-server is still installed, because a fresh CI machine needs it. If KUBEBUILDER_ASSETS
# names a folder holding all binaries, nothing is built either. The build goes into a temporary folder that is renamed
# into place at the end, so a half-built cache is never taken for a complete one.
#
# Environment:
#   GLMOPS_CACHE_DIR   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/glmops)
#   KUBEBUILDER_ASSETS folder with prebuilt binaries (envtest convention); skips the build
#   GLMOPS_BUILD_JOBS  parallel Go build jobs (default: number of CPUs)
set -euo pipefail

K8S_VERSION=1.20.2
# Bump when the recipe below changes what is built: an older cache is then rebuilt.
# glmops_dev/binaries.py (BUILD_RECIPE) checks the same number.
BUILD_RECIPE=2
# The Git commit of the upstream v1.20.2 tag; only reported by `kubectl version`.
K8S_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56
CACHE_ROOT="${GLMOPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/glmops}"
DEST="$CACHE_ROOT/k8s-$K8S_VERSION"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
DEB_SRC_FILE=/etc/apt/sources.list.d/glmops-deb-src.sources

log() { printf '[build-kubernetes] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Root commands go through sudo when we are not root.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

apt_updated=0
apt_update() {
    if [[ $apt_updated -eq 0 ]]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        apt_updated=1
    fi
}

# Install the Debian packages that are not installed yet.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing ${missing[*]}"
        apt_update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

cache_complete() {
    local bin
    grep -qx "recipe=$BUILD_RECIPE" "$DEST/STAMP" 2>/dev/null || return 1
    for bin in "${BINARIES[@]}"; do
        [[ -x "$DEST/bin/$bin" ]] || return 1
    done
}

assets_complete() {
    local bin
    [[ -n "${KUBEBUILDER_ASSETS:-}" ]] || return 1
    for bin in "${BINARIES[@]}"; do
        [[ -x "$KUBEBUILDER_ASSETS/$bin" ]] || return 1
    done
}

# The Debian mirror this machine already uses (so the deb-src line reaches the same host).
debian_mirror() {
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" && $0 ~ /bookworm/ && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

ensure_deb_src() {
    if [[ -f "$DEB_SRC_FILE" ]]; then
        return
    fi
    if grep -rqsE '^[[:space:]]*(deb-src[[:space:]].*bookworm|Types:.*deb-src)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
        return
    fi
    local mirror
    mirror=$(debian_mirror)
    log "adding a deb-src entry for bookworm ($mirror)"
    as_root tee "$DEB_SRC_FILE" >/dev/null <<EOF
Types: deb-src
URIs: $mirror
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt_updated=0
}

build() {
    ensure_deb_src
    apt_update
    apt_install golang-go rsync make dpkg-dev golang-github-modern-go-reflect2-dev

    mkdir -p "$CACHE_ROOT"
    local work
    work=$(mktemp -d "$CACHE_ROOT/.build-k8s-$K8S_VERSION.XXXXXX")
    # shellcheck disable=SC2064  # expand $work now: it is local
    trap "rm -rf '$work'" EXIT

    log "downloading Debian's kubernetes source package into $work"
    (cd "$work" && apt-get source --download-only kubernetes)
    local orig
    orig=$(find "$work" -maxdepth 1 -name "kubernetes_*$K8S_VERSION.orig.tar.*" ! -name '*.asc' | head -n1)
    [[ -n "$orig" ]] || die "no orig tarball of Kubernetes $K8S_VERSION in $(ls "$work")"

    local src="$work/src" patches dsc
    dsc=$(find "$work" -maxdepth 1 -name 'kubernetes_*.dsc' | head -n1)
    if [[ -n "$dsc" ]] && (cd "$work" && dpkg-source --no-check -x "$(basename "$dsc")" "$src") >"$work/dpkg-source.log" 2>&1; then
        log "unpacked $(basename "$dsc") with Debian's patches"
        patches="debian"
    else
        log "Debian's patches do not apply ($(tail -n1 "$work/dpkg-source.log" 2>/dev/null)); using the upstream tarball only"
        rm -rf "$src" "$work/unpack"
        mkdir -p "$work/unpack"
        tar -xf "$orig" -C "$work/unpack"
        if [[ $(find "$work/unpack" -mindepth 1 -maxdepth 1 | wc -l) -eq 1 ]]; then
            src=$(find "$work/unpack" -mindepth 1 -maxdepth 1 -type d)
        else
            src="$work/unpack"
        fi
        patches="none"
    fi
    [[ -d "$src/vendor" && -f "$src/Makefile" ]] || die "unexpected source layout in $src (no vendor/ or Makefile)"

    # The vendored reflect2 1.0.1 faults in mapiterinit under Go >= 1.18; Debian ships 1.0.2.
    local reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [[ -d "$reflect2" ]] || die "$reflect2 missing (package golang-github-modern-go-reflect2-dev)"
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    mkdir -p "$src/vendor/github.com/modern-go/reflect2"
    cp -a "$reflect2/." "$src/vendor/github.com/modern-go/reflect2/"
    rm -f "$src/vendor/github.com/modern-go/reflect2/go.mod" "$src/vendor/github.com/modern-go/reflect2/go.sum"

    # Go >= 1.16 shares reflect.Zero's storage, so this check now calls "" (and 0, false) null.
    local zero_check='reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))'
    local validators
    validators=$(grep -rlF "$zero_check" "$src/vendor" || true)
    [[ -n "$validators" ]] || die "the OpenAPI type validator's zero-value check was not found in vendor/"
    local file
    for file in $validators; do
        sed -i "s/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/" "$file"
        ! grep -qF "$zero_check" "$file" || die "could not patch $file"
        log "patched the zero-value check in ${file#"$src"/}"
    done

    # No .git in a tarball: tell the build which version it is.
    cat >"$work/version-vars" <<EOF
KUBE_GIT_COMMIT='$K8S_GIT_COMMIT'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v$K8S_VERSION'
KUBE_GIT_MAJOR='${K8S_VERSION%%.*}'
KUBE_GIT_MINOR='$(echo "$K8S_VERSION" | cut -d. -f2)'
EOF

    mkdir -p "$work/gopath/src/k8s.io"
    ln -s "$src" "$work/gopath/src/k8s.io/kubernetes"
    local targets=()
    local bin
    for bin in "${BINARIES[@]}"; do targets+=("cmd/$bin"); done

    log "building ${targets[*]} with $(go version) (several minutes)"
    local started=$SECONDS
    (
        cd "$work/gopath/src/k8s.io/kubernetes"
        export GOPATH="$work/gopath" CGO_ENABLED=0 GOFLAGS="-p=${GLMOPS_BUILD_JOBS:-$(nproc)}"
        export KUBE_GIT_VERSION_FILE="$work/version-vars"
        export GOTOOLCHAIN=local
        make WHAT="${targets[*]}"
    )
    log "build took $((SECONDS - started)) s"

    local staging="$work/k8s-$K8S_VERSION"
    mkdir -p "$staging/bin"
    for bin in "${BINARIES[@]}"; do
        local built=""
        for dir in "$src/_output/bin" "$src/_output/local/bin/linux/amd64" "$src/_output/local/go/bin"; do
            if [[ -x "$dir/$bin" ]]; then built="$dir/$bin"; break; fi
        done
        [[ -n "$built" ]] || die "build finished but $bin is not in $src/_output"
        cp "$built" "$staging/bin/$bin"
    done
    {
        echo "kubernetes=$K8S_VERSION"
        echo "recipe=$BUILD_RECIPE"
        echo "source=$(basename "$orig")"
        echo "debian-patches=$patches"
        echo "go=$(go version | awk '{print $3}')"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "seconds=$((SECONDS - started))"
    } >"$staging/STAMP"

    # Swap folders by renames; running clusters keep their (deleted) binaries open.
    if [[ -e "$DEST" ]]; then
        mv "$DEST" "$work/previous"
    fi
    mv "$staging" "$DEST"
    log "cached in $DEST/bin"
}

main() {
    # etcd comes from Debian in every case (envtest assets may carry their own, which wins).
    if ! { [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/etcd" ]] || command -v etcd >/dev/null 2>&1; }; then
        apt_install etcd-server
    fi

    if assets_complete; then
        log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS; nothing to build"
        return
    fi
    if cache_complete; then
        log "cache is complete: $DEST/bin"
        return
    fi

    mkdir -p "$CACHE_ROOT"
    # One build at a time: a second caller waits, then finds the cache complete.
    exec 9>"$CACHE_ROOT/.k8s-$K8S_VERSION.lock"
    flock 9
    if cache_complete; then
        log "cache completed by another build: $DEST/bin"
        return
    fi
    build
}

main "$@"
