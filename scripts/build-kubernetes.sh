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
# kube-proxy (the local cluster's Service proxy, run in iptables mode) is built from the same
# prepared source into its own cache entry, ${CACHE_ROOT}/kube-proxy-$K8S_VERSION/bin, with its
# own STAMP, recipe number and lock: adding it never invalidates a complete control-plane cache,
# and a warm kube-proxy cache skips its build (about 2 minutes otherwise). The tools pod
# networking runs come from Debian and are installed in every case: iproute2, iptables
# (kube-proxy's backend), ipset (`kube-proxy --cleanup` needs it), conntrack and dnsmasq-base
# (the local cluster DNS).
#
# Environment:
#   GLMOPS_CACHE_DIR   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/glmops)
#   KUBEBUILDER_ASSETS folder with prebuilt binaries (envtest convention); skips the build
#                      (kube-proxy's too, when the folder holds one)
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
# kube-proxy's own cache entry; glmops_dev/binaries.py (KUBE_PROXY_RECIPE) checks the same number.
KUBE_PROXY_RECIPE=1
PROXY_DEST="$CACHE_ROOT/kube-proxy-$K8S_VERSION"
# What pod networking runs (Debian package names).
NETWORK_PACKAGES=(iproute2 iptables ipset conntrack dnsmasq-base)
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

proxy_cache_complete() {
    grep -qx "recipe=$KUBE_PROXY_RECIPE" "$PROXY_DEST/STAMP" 2>/dev/null && [[ -x "$PROXY_DEST/bin/kube-proxy" ]]
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

# Download Debian's source package into $1 and patch it for building. Sets SRC (the source
# tree), ORIG (the upstream tarball) and PATCHES (debian|none) for the STAMP.
prepare_source() {
    local work=$1
    ensure_deb_src
    apt_update
    apt_install golang-go rsync make dpkg-dev golang-github-modern-go-reflect2-dev

    log "downloading Debian's kubernetes source package into $work"
    (cd "$work" && apt-get source --download-only kubernetes)
    ORIG=$(find "$work" -maxdepth 1 -name "kubernetes_*$K8S_VERSION.orig.tar.*" ! -name '*.asc' | head -n1)
    [[ -n "$ORIG" ]] || die "no orig tarball of Kubernetes $K8S_VERSION in $(ls "$work")"

    SRC="$work/src"
    local dsc
    dsc=$(find "$work" -maxdepth 1 -name 'kubernetes_*.dsc' | head -n1)
    if [[ -n "$dsc" ]] && (cd "$work" && dpkg-source --no-check -x "$(basename "$dsc")" "$SRC") >"$work/dpkg-source.log" 2>&1; then
        log "unpacked $(basename "$dsc") with Debian's patches"
        PATCHES="debian"
    else
        log "Debian's patches do not apply ($(tail -n1 "$work/dpkg-source.log" 2>/dev/null)); using the upstream tarball only"
        rm -rf "$SRC" "$work/unpack"
        mkdir -p "$work/unpack"
        tar -xf "$ORIG" -C "$work/unpack"
        if [[ $(find "$work/unpack" -mindepth 1 -maxdepth 1 | wc -l) -eq 1 ]]; then
            SRC=$(find "$work/unpack" -mindepth 1 -maxdepth 1 -type d)
        else
            SRC="$work/unpack"
        fi
        PATCHES="none"
    fi
    [[ -d "$SRC/vendor" && -f "$SRC/Makefile" ]] || die "unexpected source layout in $SRC (no vendor/ or Makefile)"

    # The vendored reflect2 1.0.1 faults in mapiterinit under Go >= 1.18; Debian ships 1.0.2.
    local reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [[ -d "$reflect2" ]] || die "$reflect2 missing (package golang-github-modern-go-reflect2-dev)"
    rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
    mkdir -p "$SRC/vendor/github.com/modern-go/reflect2"
    cp -a "$reflect2/." "$SRC/vendor/github.com/modern-go/reflect2/"
    rm -f "$SRC/vendor/github.com/modern-go/reflect2/go.mod" "$SRC/vendor/github.com/modern-go/reflect2/go.sum"

    # Go >= 1.16 shares reflect.Zero's storage, so this check now calls "" (and 0, false) null.
    local zero_check='reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))'
    local validators
    validators=$(grep -rlF "$zero_check" "$SRC/vendor" || true)
    [[ -n "$validators" ]] || die "the OpenAPI type validator's zero-value check was not found in vendor/"
    local file
    for file in $validators; do
        sed -i "s/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/" "$file"
        ! grep -qF "$zero_check" "$file" || die "could not patch $file"
        log "patched the zero-value check in ${file#"$SRC"/}"
    done

    # No .git in a tarball: tell the build which version it is.
    cat >"$work/version-vars" <<EOF
KUBE_GIT_COMMIT='$K8S_GIT_COMMIT'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v$K8S_VERSION'
KUBE_GIT_MAJOR='${K8S_VERSION%%.*}'
KUBE_GIT_MINOR='$(echo "$K8S_VERSION" | cut -d. -f2)'
EOF
}

# Build binaries of the prepared source ($SRC) into STAGING/bin and write STAGING/STAMP.
# Usage: go_build WORK STAGING RECIPE BINARY...
go_build() {
    local work=$1 staging=$2 recipe=$3
    shift 3
    local targets=() bin
    for bin in "$@"; do targets+=("cmd/$bin"); done

    mkdir -p "$work/gopath/src/k8s.io"
    ln -s "$SRC" "$work/gopath/src/k8s.io/kubernetes"
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

    mkdir -p "$staging/bin"
    for bin in "$@"; do
        local built="" dir
        for dir in "$SRC/_output/bin" "$SRC/_output/local/bin/linux/amd64" "$SRC/_output/local/go/bin"; do
            if [[ -x "$dir/$bin" ]]; then built="$dir/$bin"; break; fi
        done
        [[ -n "$built" ]] || die "build finished but $bin is not in $SRC/_output"
        cp "$built" "$staging/bin/$bin"
    done
    {
        echo "kubernetes=$K8S_VERSION"
        echo "recipe=$recipe"
        echo "source=$(basename "$ORIG")"
        echo "debian-patches=$PATCHES"
        echo "go=$(go version | awk '{print $3}')"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "seconds=$((SECONDS - started))"
    } >"$staging/STAMP"
}

# Swap a finished staging folder into place by renames; running clusters keep their (deleted)
# binaries open. Usage: install_cache WORK STAGING DEST
install_cache() {
    local work=$1 staging=$2 dest=$3
    if [[ -e "$dest" ]]; then
        mv "$dest" "$work/previous"
    fi
    mv "$staging" "$dest"
    log "cached in $dest/bin"
}

# Build in a temporary folder of the cache root. Usage: build NAME DEST RECIPE BINARY...
build() {
    local name=$1 dest=$2 recipe=$3
    shift 3
    mkdir -p "$CACHE_ROOT"
    local work
    work=$(mktemp -d "$CACHE_ROOT/.build-$name-$K8S_VERSION.XXXXXX")
    # shellcheck disable=SC2064  # expand $work now: it is local
    trap "rm -rf '$work'" EXIT
    prepare_source "$work"
    go_build "$work" "$work/$name-$K8S_VERSION" "$recipe" "$@"
    install_cache "$work" "$work/$name-$K8S_VERSION" "$dest"
    rm -rf "$work"
    trap - EXIT
}

ensure_control_plane() {
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
    else
        build k8s "$DEST" "$BUILD_RECIPE" "${BINARIES[@]}"
    fi
    exec 9>&-
}

ensure_kube_proxy() {
    if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-proxy" ]]; then
        log "using kube-proxy of KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
        return
    fi
    if proxy_cache_complete; then
        log "kube-proxy cache is complete: $PROXY_DEST/bin"
        return
    fi
    mkdir -p "$CACHE_ROOT"
    exec 8>"$CACHE_ROOT/.kube-proxy-$K8S_VERSION.lock"
    flock 8
    if proxy_cache_complete; then
        log "kube-proxy cache completed by another build: $PROXY_DEST/bin"
    else
        build kube-proxy "$PROXY_DEST" "$KUBE_PROXY_RECIPE" kube-proxy
    fi
    exec 8>&-
}

main() {
    # etcd comes from Debian in every case (envtest assets may carry their own, which wins).
    if ! { [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/etcd" ]] || command -v etcd >/dev/null 2>&1; }; then
        apt_install etcd-server
    fi
    # Pod networking's run-time tools, on a warm machine too.
    apt_install "${NETWORK_PACKAGES[@]}"
    ensure_control_plane
    ensure_kube_proxy
}

main "$@"
