"""Where the control plane's binaries come from: ``KUBEBUILDER_ASSETS``, or a build cached once.

Lookup order for kube-apiserver, kube-controller-manager, kube-scheduler and kubectl:

1. ``$KUBEBUILDER_ASSETS`` (the envtest convention: one folder holding every binary, etcd too);
2. the cache ``${GLMOPS_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/glmops}/k8s-<version>/bin``,
   filled by ``scripts/build-kubernetes.sh`` (Debian's ``kubernetes`` source package). A cache
   folder only counts once its ``STAMP`` file exists (the script writes it last) and names
   the current build recipe.

etcd is taken from ``$KUBEBUILDER_ASSETS`` when it holds one, else from ``PATH`` (Debian's
``etcd-server`` package installs ``/usr/bin/etcd``).

kube-proxy (the pod network's Service proxy) is looked up the same way, in ``$KUBEBUILDER_ASSETS``
or in its own cache entry ``kube-proxy-<version>/bin`` (its own STAMP and recipe, so adding it
never invalidated a control-plane cache).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "1.20.2"
"""The Kubernetes version that ``scripts/build-kubernetes.sh`` builds; the cache is keyed by it."""

BUILD_RECIPE = "2"
"""Revision of the build recipe (``BUILD_RECIPE`` in the script); an older cache is not used."""

KUBE_PROXY_RECIPE = "1"
"""Revision of kube-proxy's build recipe (``KUBE_PROXY_RECIPE`` in the script)."""

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BUILD_SCRIPT_RELATIVE = Path("scripts") / "build-kubernetes.sh"

HOW_TO_GET_BINARIES = (
    "Build the binaries once with `bash scripts/build-kubernetes.sh` (installs Debian's golang-go and "
    "etcd-server, needs root or sudo, takes several minutes; cached afterwards), or point "
    "KUBEBUILDER_ASSETS at a folder holding kube-apiserver, kube-controller-manager, "
    "kube-scheduler, kubectl (and etcd), or set GLMOPS_USE_EXISTING_CLUSTER=1 with KUBECONFIG "
    "naming a reachable cluster."
)


class BinariesNotFoundError(RuntimeError):
    """The control plane's binaries are missing; the message says how to get them."""


@dataclass(frozen=True)
class ControlPlaneBinaries:
    """Absolute paths of every binary the local control plane runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kube_proxy: Path | None = None
    """None when kube-proxy is not built yet (a control plane without pod network runs without it)."""


def cache_root() -> Path:
    """The folder under which built binaries are cached."""
    explicit = os.environ.get("GLMOPS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "glmops"


def cache_dir(version: str = K8S_VERSION) -> Path:
    """The cache folder of one Kubernetes version (``bin/`` and ``STAMP`` live in it)."""
    return cache_root() / f"k8s-{version}"


def kube_proxy_cache_dir(version: str = K8S_VERSION) -> Path:
    """The cache folder of kube-proxy (``bin/kube-proxy`` and ``STAMP``)."""
    return cache_root() / f"kube-proxy-{version}"


def repo_root() -> Path:
    """The source checkout this package lives in (the build script sits there)."""
    return Path(__file__).resolve().parents[2]


def build_script() -> Path:
    """Path of ``scripts/build-kubernetes.sh``."""
    return repo_root() / BUILD_SCRIPT_RELATIVE


def cache_is_current(folder: Path, recipe: str = BUILD_RECIPE) -> bool:
    """Whether a cache folder is complete and was built by the current recipe."""
    try:
        stamp = (folder / "STAMP").read_text().splitlines()
    except FileNotFoundError:
        return False
    return f"recipe={recipe}" in stamp


def find_kube_proxy() -> Path | None:
    """kube-proxy from ``$KUBEBUILDER_ASSETS`` or its cache entry; None when neither has it."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and _executable(Path(assets) / "kube-proxy"):
        return Path(assets) / "kube-proxy"
    cached = kube_proxy_cache_dir()
    binary = cached / "bin" / "kube-proxy"
    if cache_is_current(cached, KUBE_PROXY_RECIPE) and _executable(binary):
        return binary
    return None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _kube_binaries_in(folder: Path) -> dict[str, Path] | None:
    found = {name: folder / name for name in KUBE_BINARIES}
    return found if all(_executable(p) for p in found.values()) else None


def _find_etcd(assets: Path | None) -> Path | None:
    if assets is not None and _executable(assets / "etcd"):
        return assets / "etcd"
    on_path = shutil.which("etcd")
    if on_path:
        return Path(on_path)
    debian = Path("/usr/bin/etcd")
    return debian if _executable(debian) else None


def find_binaries() -> ControlPlaneBinaries:
    """Locate every binary, or raise :class:`BinariesNotFoundError` saying how to get them."""
    assets_env = os.environ.get("KUBEBUILDER_ASSETS")
    assets = Path(assets_env) if assets_env else None
    kube: dict[str, Path] | None = None
    where: str
    if assets is not None:
        kube = _kube_binaries_in(assets)
        where = f"KUBEBUILDER_ASSETS={assets}"
        if kube is None:
            missing = [n for n in KUBE_BINARIES if not _executable(assets / n)]
            raise BinariesNotFoundError(
                f"{where} lacks executable {', '.join(missing)}. {HOW_TO_GET_BINARIES}"
            )
    else:
        cached = cache_dir()
        where = str(cached / "bin")
        if cache_is_current(cached):
            kube = _kube_binaries_in(cached / "bin")
        if kube is None:
            raise BinariesNotFoundError(
                f"No current build of Kubernetes {K8S_VERSION} in {where} (missing, incomplete, or "
                f"made by an older recipe than {BUILD_RECIPE}). {HOW_TO_GET_BINARIES}"
            )
    etcd = _find_etcd(assets)
    if etcd is None:
        raise BinariesNotFoundError(
            "etcd not found (neither in KUBEBUILDER_ASSETS nor on PATH). Install Debian's "
            f"etcd-server (`apt-get install etcd-server`). {HOW_TO_GET_BINARIES}"
        )
    return ControlPlaneBinaries(
        etcd=etcd,
        kube_apiserver=kube["kube-apiserver"],
        kube_controller_manager=kube["kube-controller-manager"],
        kube_scheduler=kube["kube-scheduler"],
        kubectl=kube["kubectl"],
        kube_proxy=find_kube_proxy(),
    )


def build_binaries(log_path: Path | None = None) -> None:
    """Run ``scripts/build-kubernetes.sh`` (a no-op on a warm cache); raise with its log tail."""
    script = build_script()
    if not script.is_file():
        raise BinariesNotFoundError(
            f"The build script {BUILD_SCRIPT_RELATIVE} is not next to this package "
            f"(looked in {script.parent}). {HOW_TO_GET_BINARIES}"
        )
    if log_path is None:
        result = subprocess.run(["bash", str(script)], check=False)
        if result.returncode != 0:
            raise BinariesNotFoundError(
                f"`bash {BUILD_SCRIPT_RELATIVE}` failed with exit code {result.returncode} "
                "(its output is above)."
            )
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        result = subprocess.run(["bash", str(script)], stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise BinariesNotFoundError(
            f"`bash {BUILD_SCRIPT_RELATIVE}` failed with exit code {result.returncode}; "
            f"last lines of {log_path}:\n{tail(log_path)}"
        )


def ensure_binaries(build: bool = True, log_path: Path | None = None) -> ControlPlaneBinaries:
    """Find the binaries (kube-proxy too); when one is missing and ``build`` is true, build first."""
    try:
        found = find_binaries()
        if found.kube_proxy is not None or not build or os.environ.get("KUBEBUILDER_ASSETS"):
            return found
    except BinariesNotFoundError:
        if not build or os.environ.get("KUBEBUILDER_ASSETS"):
            raise
    print(
        f"Kubernetes {K8S_VERSION} binaries (or kube-proxy) not cached; building them with "
        f"{BUILD_SCRIPT_RELATIVE} (several minutes)...",
        file=sys.stderr,
    )
    build_binaries(log_path)
    return find_binaries()


def require_kube_proxy(binaries: ControlPlaneBinaries | None = None) -> Path:
    """kube-proxy's path, or :class:`BinariesNotFoundError` saying how to build it."""
    binary = binaries.kube_proxy if binaries is not None else find_kube_proxy()
    if binary is None:
        raise BinariesNotFoundError(
            f"kube-proxy {K8S_VERSION} is not built (looked in KUBEBUILDER_ASSETS and "
            f"{kube_proxy_cache_dir() / 'bin'}); the pod network needs it. Build it once with "
            "`bash scripts/build-kubernetes.sh` (a warm control-plane cache is kept; kube-proxy takes "
            "a few minutes)."
        )
    return binary


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file (empty when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
