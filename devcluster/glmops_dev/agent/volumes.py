"""A pod's volumes as folders and files on this machine, and the binds that show them to each container.

Layout under the node agent's state folder:

- ``volumes/pvc/<namespace>/<claim>``: a persistentVolumeClaim (kept across pods: what one pod
  writes, the next one reads);
- ``volumes/hostpath/<escaped path>``: a hostPath (the real host path is never used);
- ``pods/<namespace>_<name>_<uid>/``: the pod's folder: container logs (``<container>.log``,
  kept after the pod is gone), ``volumes/<name>`` for emptyDir, configMap, secret, downwardAPI and
  projected volumes, ``termination/<container>`` (bound at ``terminationMessagePath``), ``work/``
  (the default working directory).

ConfigMap, Secret and downward API contents are written once, when the pod starts (the kubelet
would refresh them); Secret files are mode 0400 unless the pod asks for a mode other than 0644.
"""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from glmops_dev.agent.env import (
    ContainerConfigError,
    ObjectSource,
    config_map_data,
    expand,
    field_value,
    resource_value,
    secret_data,
)
from glmops_dev.agent.launcher import Bind

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
CONFIG_MAP_DEFAULT_MODE = 0o644
SECRET_DEFAULT_MODE = 0o400
API_DEFAULT_MODE = 0o644
"""The API server fills in ``defaultMode: 420`` (0644) when a pod leaves it out."""
SUPPORTED_TYPES = (
    "emptyDir",
    "persistentVolumeClaim",
    "hostPath",
    "configMap",
    "secret",
    "downwardAPI",
    "projected",
)


class VolumeError(Exception):
    """A volume cannot be set up yet (a missing ConfigMap or Secret); the kubelet retries such mounts."""


class VolumeUnsupportedError(Exception):
    """A volume type this agent cannot provide; the pod fails."""


class VolumeSource(ObjectSource, Protocol):
    """ConfigMaps, Secrets and service-account tokens for volumes."""

    def service_account_token(
        self,
        namespace: str,
        service_account: str,
        audience: str | None,
        expiration_s: int,
        pod: Mapping[str, Any],
    ) -> str:
        """A token of the pod's ServiceAccount bound to the pod (TokenRequest API)."""
        ...


def pod_dir_name(namespace: str, name: str, uid: str) -> str:
    """``<namespace>_<name>_<uid>``, as the kubelet names pod log folders."""
    return f"{namespace}_{name}_{uid}"


@dataclass(frozen=True)
class PodPaths:
    """Where a pod's files live on this machine."""

    state_dir: Path
    namespace: str
    name: str
    uid: str

    @property
    def pod_dir(self) -> Path:
        """``<state>/pods/<namespace>_<name>_<uid>``."""
        return self.state_dir / "pods" / pod_dir_name(self.namespace, self.name, self.uid)

    @property
    def work_dir(self) -> Path:
        """Default working directory of the pod's containers."""
        return self.pod_dir / "work"

    def volume_dir(self, volume: str) -> Path:
        """Folder of a pod-scoped volume."""
        return self.pod_dir / "volumes" / volume

    def log_path(self, container: str) -> Path:
        """The log of the container's current (or last) run."""
        return self.pod_dir / f"{container}.log"

    def previous_log_path(self, container: str) -> Path:
        """The log of the run before the current one (``kubectl logs --previous``)."""
        return self.pod_dir / f"{container}.previous.log"

    def termination_file(self, container: str) -> Path:
        """The file bound at the container's ``terminationMessagePath``."""
        return self.pod_dir / "termination" / container

    def record_path(self, container: str) -> Path:
        """Pid and start time of the container's process (to kill it after an agent crash)."""
        return self.pod_dir / f"{container}.pid"


def pvc_dir(state_dir: Path, namespace: str, claim: str) -> Path:
    """Folder standing in for a PersistentVolumeClaim."""
    return state_dir / "volumes" / "pvc" / namespace / claim


def hostpath_dir(state_dir: Path, path: str) -> Path:
    """Folder standing in for a hostPath (the path, percent-escaped, as one name)."""
    return state_dir / "volumes" / "hostpath" / urllib.parse.quote(path, safe="")


@dataclass(frozen=True)
class PreparedVolume:
    """A volume ready to be bound."""

    path: Path
    read_only: bool


def _safe_relative(path: str, where: str) -> PurePosixPath:
    relative = PurePosixPath(path)
    if not path or relative.is_absolute() or ".." in relative.parts:
        raise ContainerConfigError(f"{where}: {path!r} must be a relative path without '..'")
    return relative


def _write_files(target: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Replace ``target`` with exactly these files (relative path -> (content, mode))."""
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for relative, (content, mode) in files.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _key_files(
    data: Mapping[str, bytes],
    items: list[Mapping[str, Any]] | None,
    default_mode: int,
    kind: str,
    where: str,
    optional: bool,
) -> dict[str, tuple[bytes, int]]:
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    files: dict[str, tuple[bytes, int]] = {}
    for item in items:
        key = str(item["key"])
        if key not in data:
            if optional:
                continue
            raise VolumeError(f"{where}: {kind} references non-existent {kind} key: {key}")
        relative = _safe_relative(str(item["path"]), f"{where}.items[{key}].path")
        files[str(relative)] = (data[key], int(item.get("mode", default_mode)))
    return files


def _object_files(
    source: ObjectSource, namespace: str, spec: Mapping[str, Any], kind: str, default_mode: int, where: str
) -> dict[str, tuple[bytes, int]]:
    name = str(spec.get("name") or spec.get("secretName") or "")
    optional = bool(spec.get("optional", False))
    if kind == "configmap":
        obj = source.config_map(namespace, name)
        data = config_map_data(obj) if obj is not None else {}
    else:
        obj = source.secret(namespace, name)
        data = secret_data(obj) if obj is not None else {}
    if obj is None and not optional:
        raise VolumeError(f'{where}: {kind} "{name}" not found')
    return _key_files(data, spec.get("items"), default_mode, kind, where, optional)


def _downward_files(
    pod: Mapping[str, Any], items: list[Mapping[str, Any]], default_mode: int, where: str
) -> dict[str, tuple[bytes, int]]:
    files: dict[str, tuple[bytes, int]] = {}
    for item in items:
        relative = _safe_relative(str(item["path"]), f"{where}.items.path")
        if "fieldRef" in item:
            value = field_value(pod, str(item["fieldRef"]["fieldPath"]))
        elif "resourceFieldRef" in item:
            ref = item["resourceFieldRef"]
            value = resource_value(pod, str(ref.get("containerName", "")), ref, f"{where}.items[{relative}]")
        else:
            raise ContainerConfigError(f"{where}.items[{relative}]: needs fieldRef or resourceFieldRef")
        files[str(relative)] = (value.encode(), int(item.get("mode", default_mode)))
    return files


def _projected_files(
    pod: Mapping[str, Any], spec: Mapping[str, Any], source: VolumeSource, where: str
) -> dict[str, tuple[bytes, int]]:
    namespace = pod["metadata"]["namespace"]
    default_mode = int(spec.get("defaultMode", CONFIG_MAP_DEFAULT_MODE))
    files: dict[str, tuple[bytes, int]] = {}
    for index, projection in enumerate(spec.get("sources") or []):
        here = f"{where}.sources[{index}]"
        if "configMap" in projection:
            files.update(
                _object_files(source, namespace, projection["configMap"], "configmap", default_mode, here)
            )
        elif "secret" in projection:
            files.update(_object_files(source, namespace, projection["secret"], "secret", default_mode, here))
        elif "downwardAPI" in projection:
            files.update(
                _downward_files(pod, projection["downwardAPI"].get("items") or [], default_mode, here)
            )
        elif "serviceAccountToken" in projection:
            token_spec = projection["serviceAccountToken"]
            account = str(pod["spec"].get("serviceAccountName") or "default")
            token = source.service_account_token(
                namespace,
                account,
                token_spec.get("audience"),
                int(token_spec.get("expirationSeconds", 3600)),
                pod,
            )
            relative = _safe_relative(str(token_spec["path"]), f"{here}.serviceAccountToken.path")
            files[str(relative)] = (token.encode(), default_mode)
        else:
            raise VolumeUnsupportedError(f"{here}: unsupported projection {sorted(projection)}")
    return files


def prepare_volumes(
    pod: Mapping[str, Any], paths: PodPaths, source: VolumeSource
) -> dict[str, PreparedVolume]:
    """Create or fill every volume of the pod; raises :class:`VolumeError` (retry) or :class:`VolumeUnsupportedError`."""
    namespace = pod["metadata"]["namespace"]
    prepared: dict[str, PreparedVolume] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = str(volume["name"])
        where = f'volume "{name}"'
        if "emptyDir" in volume:
            path = paths.volume_dir(name)
            path.mkdir(parents=True, exist_ok=True)
            prepared[name] = PreparedVolume(path, read_only=False)
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            path = pvc_dir(paths.state_dir, namespace, str(claim["claimName"]))
            path.mkdir(parents=True, exist_ok=True)
            prepared[name] = PreparedVolume(path, read_only=bool(claim.get("readOnly", False)))
        elif "hostPath" in volume:
            host = volume["hostPath"]
            kind = str(host.get("type") or "")
            path = hostpath_dir(paths.state_dir, str(host["path"]))
            if kind in ("File", "FileOrCreate"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch(exist_ok=True)
            elif kind in ("", "Directory", "DirectoryOrCreate"):
                path.mkdir(parents=True, exist_ok=True)
            else:
                raise VolumeUnsupportedError(
                    f"{where}: hostPath type {kind} is not supported by the local node agent"
                )
            prepared[name] = PreparedVolume(path, read_only=False)
        elif "configMap" in volume:
            spec = volume["configMap"]
            mode = int(spec.get("defaultMode", CONFIG_MAP_DEFAULT_MODE))
            path = paths.volume_dir(name)
            _write_files(path, _object_files(source, namespace, spec, "configmap", mode, where))
            prepared[name] = PreparedVolume(path, read_only=True)
        elif "secret" in volume:
            spec = volume["secret"]
            # Secrets are private here: the API's default 0644 (which cannot be told apart from
            # an explicit 0644) becomes 0400; any other mode the pod asks for is kept.
            mode = int(spec.get("defaultMode", API_DEFAULT_MODE))
            mode = SECRET_DEFAULT_MODE if mode == API_DEFAULT_MODE else mode
            path = paths.volume_dir(name)
            _write_files(path, _object_files(source, namespace, spec, "secret", mode, where))
            prepared[name] = PreparedVolume(path, read_only=True)
        elif "downwardAPI" in volume:
            spec = volume["downwardAPI"]
            mode = int(spec.get("defaultMode", CONFIG_MAP_DEFAULT_MODE))
            path = paths.volume_dir(name)
            _write_files(path, _downward_files(pod, spec.get("items") or [], mode, where))
            prepared[name] = PreparedVolume(path, read_only=True)
        elif "projected" in volume:
            path = paths.volume_dir(name)
            _write_files(path, _projected_files(pod, volume["projected"], source, where))
            prepared[name] = PreparedVolume(path, read_only=True)
        else:
            kinds = sorted(set(volume) - {"name"})
            raise VolumeUnsupportedError(
                f"{where}: type {', '.join(kinds)} is not supported by the local node agent "
                f"(supported: {', '.join(SUPPORTED_TYPES)})"
            )
    return prepared


def container_binds(
    container: Mapping[str, Any],
    volumes: Mapping[str, PreparedVolume],
    paths: PodPaths,
    env: Mapping[str, str],
) -> list[Bind]:
    """The binds of one container: its volumeMounts (with subPath/subPathExpr) and its termination file."""
    binds: list[Bind] = []
    name = str(container["name"])
    for index, mount in enumerate(container.get("volumeMounts") or []):
        where = f"container {name}: volumeMounts[{index}]"
        volume = volumes.get(str(mount["name"]))
        if volume is None:
            raise ContainerConfigError(f"{where}.name: no volume named {mount['name']!r} in the pod")
        target = str(mount["mountPath"])
        if not target.startswith("/") or ":" in target:
            raise ContainerConfigError(f"{where}.mountPath: {target!r} must be absolute and hold no ':'")
        source = volume.path
        sub = str(mount.get("subPath") or "")
        if mount.get("subPathExpr"):
            sub = expand(str(mount["subPathExpr"]), env.get)
        if sub:
            source = volume.path / _safe_relative(sub, f"{where}.subPath")
            if not source.exists():
                source.mkdir(parents=True, exist_ok=True)
        read_only = bool(mount.get("readOnly", False)) or volume.read_only
        binds.append(Bind(str(source), target, read_only))
    termination_path = str(container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)
    if not termination_path.startswith("/") or ":" in termination_path:
        raise ContainerConfigError(
            f"container {name}: terminationMessagePath {termination_path!r} must be absolute and hold no ':'"
        )
    binds.append(Bind(str(paths.termination_file(name)), termination_path))
    return binds


def hidden_paths(binds: list[Bind], needed: list[str]) -> list[tuple[str, str]]:
    """(mount path, needed path) for each mount that would cover a path the process needs on this machine.

    Containers share this machine's file system: a volume mounted at ``/work`` hides everything
    under the host's ``/work``, such as the project's Python environment.
    """
    found = []
    for bind in binds:
        target = PurePosixPath(bind.target)
        for path in needed:
            candidate = PurePosixPath(path)
            if candidate == target or target in candidate.parents:
                found.append((bind.target, path))
    return found


def reset_termination_file(paths: PodPaths, container: str) -> Path:
    """An empty termination-message file for the container's next run."""
    path = paths.termination_file(container)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    path.chmod(0o666)
    return path


def cleanup_pod_dir(pod_dir: Path) -> None:
    """Remove a finished pod's volumes and files, keeping its container logs."""
    if not pod_dir.is_dir():
        return
    for entry in pod_dir.iterdir():
        if entry.is_file() and entry.name.endswith(".log"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            try:
                entry.unlink()
            except OSError:
                pass
