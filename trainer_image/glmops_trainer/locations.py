"""Where a config's URIs are inside the pod, shared by the training and the export recipes.

The URI grammar is `glmops.contract.uris` (the operator parses with it too); this module only
maps parsed URIs to local paths and names the folders both recipes use.
"""

from __future__ import annotations

from pathlib import Path

from glmops.contract.uris import UriError, pod_path

MODEL_CACHE_DIR = ".model-cache"
"""Under the output folder: hf:// and s3:// models are fetched here, so a restarted pod finds them again."""
ADAPTER_DIR = "adapter"
"""Under the output folder: the trained adapter that training leaves for the export."""


class LocationError(ValueError):
    """A URI this pod cannot reach as a local path; the message names the field and the fix."""


def local_location(uri: str, pvc_mount_root: str, field: str) -> Path:
    """The pod-local path of a file:// or pvc:// URI; other schemes raise LocationError naming `field`."""
    try:
        local = pod_path(uri, pvc_mount_root)
    except UriError as exc:
        raise LocationError(f"{field}: {exc}") from None
    if local is None:
        raise LocationError(
            f"{field}: {uri!r}: only file:// and pvc:// are supported here; copy the data to a PVC and use "
            f"pvc://CLAIM/PATH ({uri.partition('://')[0]}:// is not)"
        )
    return Path(local)
