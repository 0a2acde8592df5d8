"""Storage URIs of glmops resources: parsing and where they appear inside a pod. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StorageUri:
    """A parsed `scheme://rest` location."""

    scheme: str
    authority: str
    path: str

    @property
    def claim(self) -> str | None:
        """The PVC name for pvc:// URIs."""
        return self.authority if self.scheme == "pvc" else None


def parse_uri(uri: str) -> StorageUri:
    """Split a URI the API models already checked (scheme://authority/path)."""
    scheme, _, rest = uri.partition("://")
    if scheme == "file":
        return StorageUri(scheme, "", "/" + rest.lstrip("/"))
    authority, _, path = rest.partition("/")
    return StorageUri(scheme, authority, path)


def pod_path(uri: str, pvc_mount_root: str) -> str | None:
    """Where a file:// or pvc:// location is inside a pod; None for remote schemes."""
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        return parsed.path
    if parsed.scheme == "pvc":
        base = f"{pvc_mount_root.rstrip('/')}/{parsed.authority}"
        return f"{base}/{parsed.path}" if parsed.path else base
    return None
