"""A container's environment as the kubelet builds it, and Kubernetes' ``$(VAR)`` expansion.

Order (as the kubelet's ``makeEnvironmentVariables``): ``envFrom`` sources first, then ``env``
entries in order; a literal ``value`` may refer to variables defined before it (``$(VAR)``), and
``command``/``args`` may refer to any of them. ``$$`` escapes ``$``; an unknown ``$(VAR)`` stays
as written. Missing Secrets, ConfigMaps or keys that are not ``optional`` raise
:class:`ContainerConfigError` with the kubelet's wording. Values of Secrets never appear in any
message.
"""

from __future__ import annotations

import base64
import math
import os
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol

ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
"""Valid environment variable names (the API server's rule); ``envFrom`` skips other keys."""

DEFAULT_PATH_TAIL = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerConfigError(Exception):
    """The container's configuration cannot be built yet (reason ``CreateContainerConfigError``)."""


class ObjectSource(Protocol):
    """Reads ConfigMaps and Secrets (plain JSON, None when absent)."""

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap, or None when it does not exist."""
        ...

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret, or None when it does not exist."""
        ...


# -- $(VAR) expansion --------------------------------------------------------------------------


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (third_party/forked/golang/expansion), character for character."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            if following == "$":
                out.append("$")
                advance = 1
            elif following == "(":
                closer = text.find(")", cursor + 2)
                if closer == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2 : closer]
                    value = lookup(name)
                    out.append(f"$({name})" if value is None else value)
                    advance = closer - cursor
            else:
                out.append("$" + following)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def expand_all(items: list[str], env: Mapping[str, str]) -> list[str]:
    """Expand every item of ``command`` or ``args`` against the container's environment."""
    return [expand(item, env.get) for item in items]


# -- values of ConfigMaps and Secrets ----------------------------------------------------------


def config_map_data(config_map: Mapping[str, Any]) -> dict[str, bytes]:
    """Every key of a ConfigMap (``data`` and ``binaryData``) as bytes."""
    data = {k: str(v).encode() for k, v in (config_map.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (config_map.get("binaryData") or {}).items()})
    return data


def secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """Every key of a Secret, decoded."""
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    data.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return data


def as_env_value(raw: bytes) -> str:
    """Bytes as an environment value; ``surrogateescape`` keeps non-UTF-8 bytes exact for exec."""
    return raw.decode("utf-8", errors="surrogateescape")


# -- the downward API --------------------------------------------------------------------------

_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\[['\"]?(.+?)['\"]?\]$")


def _format_map(values: Mapping[str, str]) -> str:
    # The kubelet's formatting for whole-map downward API files: sorted key="value" lines.
    return "\n".join(f"{k}={_quote(v)}" for k, v in sorted(values.items()))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """The value of a ``fieldRef`` (env or downwardAPI volume) for this pod on a simulated node.

    ``status.podIP``, ``status.podIPs`` and ``status.hostIP`` are read from the pod's status,
    which the node agent fills with the pod's addresses before it builds a container.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: str(meta.get("name", "")),
        "metadata.namespace": lambda: str(meta.get("namespace", "")),
        "metadata.uid": lambda: str(meta.get("uid", "")),
        "spec.nodeName": lambda: str(spec.get("nodeName", "")),
        "spec.serviceAccountName": lambda: str(
            spec.get("serviceAccountName") or spec.get("serviceAccount") or ""
        ),
        "status.podIP": lambda: str(status.get("podIP") or ""),
        "status.podIPs": lambda: ",".join(str(item["ip"]) for item in status.get("podIPs") or []),
        "status.hostIP": lambda: str(status.get("hostIP") or ""),
        "metadata.labels": lambda: _format_map(meta.get("labels") or {}),
        "metadata.annotations": lambda: _format_map(meta.get("annotations") or {}),
    }
    if field_path in simple:
        return simple[field_path]()
    match = _SUBSCRIPT.match(field_path)
    if match:
        values = meta.get(match.group(1)) or {}
        return str(values.get(match.group(2), ""))
    raise ContainerConfigError(f"unsupported fieldRef fieldPath {field_path!r}")


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resource_value(pod: Mapping[str, Any], container_name: str, ref: Mapping[str, Any], where: str) -> str:
    """The value of a ``resourceFieldRef``; an unset limit reads as this machine's capacity (kubelet rule)."""
    from kubernetes.utils import parse_quantity

    resource = str(ref.get("resource", ""))
    name = str(ref.get("containerName") or container_name)
    containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
    container = next((c for c in containers if c.get("name") == name), None)
    if container is None:
        raise ContainerConfigError(f"{where}.resourceFieldRef.containerName: no container named {name!r}")
    kind, _, quantity_name = resource.partition(".")
    if kind not in ("limits", "requests") or quantity_name not in ("cpu", "memory", "ephemeral-storage"):
        raise ContainerConfigError(f"{where}.resourceFieldRef.resource: unsupported resource {resource!r}")
    given = ((container.get("resources") or {}).get(kind) or {}).get(quantity_name)
    if given is None and kind == "limits":
        capacity: dict[str, Decimal] = {
            "cpu": Decimal(os.cpu_count() or 1),
            "memory": Decimal(_host_memory_bytes()),
            "ephemeral-storage": Decimal(2**40),
        }
        amount = capacity[quantity_name]
    else:
        amount = parse_quantity(given if given is not None else "0")  # type: ignore[no-untyped-call]
    divisor = parse_quantity(str(ref.get("divisor") or "1"))  # type: ignore[no-untyped-call]
    if divisor == 0:
        raise ContainerConfigError(f"{where}.resourceFieldRef.divisor must not be 0")
    return str(math.ceil(amount / divisor))


# -- the whole environment ---------------------------------------------------------------------


def service_env(api_host: str | None, api_port: int | None) -> dict[str, str]:
    """``KUBERNETES_SERVICE_*`` naming the ``kubernetes`` Service (its ClusterIP and port), as in-cluster clients expect."""
    if not api_host or not api_port:
        return {}
    return {
        "KUBERNETES_SERVICE_HOST": api_host,
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
        "KUBERNETES_PORT": f"tcp://{api_host}:{api_port}",
        "KUBERNETES_PORT_443_TCP": f"tcp://{api_host}:{api_port}",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": str(api_port),
        "KUBERNETES_PORT_443_TCP_ADDR": api_host,
    }


def _optional(ref: Mapping[str, Any]) -> bool:
    return bool(ref.get("optional", False))


def _env_from(
    pod: Mapping[str, Any], container: Mapping[str, Any], source: ObjectSource, env: dict[str, str]
) -> None:
    namespace = pod["metadata"]["namespace"]
    for index, item in enumerate(container.get("envFrom") or []):
        prefix = str(item.get("prefix") or "")
        if "configMapRef" in item:
            ref = item["configMapRef"]
            config_map = source.config_map(namespace, ref["name"])
            if config_map is None:
                if _optional(ref):
                    continue
                raise ContainerConfigError(f'configmap "{ref["name"]}" not found')
            values = {k: str(v) for k, v in (config_map.get("data") or {}).items()}
        elif "secretRef" in item:
            ref = item["secretRef"]
            secret = source.secret(namespace, ref["name"])
            if secret is None:
                if _optional(ref):
                    continue
                raise ContainerConfigError(f'secret "{ref["name"]}" not found')
            values = {k: as_env_value(v) for k, v in secret_data(secret).items()}
        else:
            raise ContainerConfigError(f"envFrom[{index}]: needs configMapRef or secretRef")
        for key, value in values.items():
            # The kubelet skips keys that are not valid names (and reports an event).
            if ENV_NAME.match(prefix + key):
                env[prefix + key] = value


def _value_from(
    pod: Mapping[str, Any], container: Mapping[str, Any], entry: Mapping[str, Any], source: ObjectSource
) -> str | None:
    """The value of one ``env[].valueFrom``; None when an optional source is missing (skip the variable)."""
    namespace = pod["metadata"]["namespace"]
    value_from = entry["valueFrom"]
    where = f"env {entry['name']}"
    if "secretKeyRef" in value_from:
        ref = value_from["secretKeyRef"]
        secret = source.secret(namespace, ref["name"])
        if secret is None:
            if _optional(ref):
                return None
            raise ContainerConfigError(f'secret "{ref["name"]}" not found')
        data = secret_data(secret)
        if ref["key"] not in data:
            if _optional(ref):
                return None
            raise ContainerConfigError(f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}")
        return as_env_value(data[ref["key"]])
    if "configMapKeyRef" in value_from:
        ref = value_from["configMapKeyRef"]
        config_map = source.config_map(namespace, ref["name"])
        if config_map is None:
            if _optional(ref):
                return None
            raise ContainerConfigError(f'configmap "{ref["name"]}" not found')
        data = config_map.get("data") or {}
        if ref["key"] not in data:
            if _optional(ref):
                return None
            raise ContainerConfigError(
                f"couldn't find key {ref['key']} in ConfigMap {namespace}/{ref['name']}"
            )
        return str(data[ref["key"]])
    if "fieldRef" in value_from:
        return field_value(pod, str(value_from["fieldRef"]["fieldPath"]))
    if "resourceFieldRef" in value_from:
        return resource_value(pod, str(container["name"]), value_from["resourceFieldRef"], where)
    raise ContainerConfigError(
        f"{where}: valueFrom needs secretKeyRef, configMapKeyRef, fieldRef or resourceFieldRef"
    )


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    source: ObjectSource,
    services: Mapping[str, str],
) -> dict[str, str]:
    """The variables Kubernetes defines for a container: ``envFrom``, then ``env``, over ``services``."""
    defined: dict[str, str] = {}
    _env_from(pod, container, source, defined)

    def lookup(name: str) -> str | None:
        if name in defined:
            return defined[name]
        return services.get(name)

    for entry in container.get("env") or []:
        name = str(entry["name"])
        if entry.get("value"):
            defined[name] = expand(str(entry["value"]), lookup)
        elif entry.get("valueFrom"):
            value = _value_from(pod, container, entry, source)
            if value is None:
                continue
            defined[name] = value
        else:
            defined[name] = ""
    return {**services, **defined}


def base_env(pod: Mapping[str, Any], python_bin_dir: str, home: str) -> dict[str, str]:
    """What an image would provide: ``PATH`` (the project's Python first), ``HOME``, ``HOSTNAME``,
    and ``GLMOPS_CACHE_DIR``: the trainer image bakes llama.cpp's tools in; here they are in the
    agent's cache, which a pod's own ``HOME`` (often an emptyDir) would otherwise hide."""
    from glmops_trainer.llamacpp_src import CACHE_ENV, cache_root

    spec = pod.get("spec") or {}
    hostname = str(spec.get("hostname") or pod["metadata"]["name"])[:63]
    return {
        "PATH": f"{python_bin_dir}:{DEFAULT_PATH_TAIL}",
        "HOME": home,
        "HOSTNAME": hostname,
        CACHE_ENV: str(cache_root()),
    }
