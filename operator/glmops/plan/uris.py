"""Storage URIs inside the planner: the grammar itself is `glmops.contract.uris`, shared with the trainer.

Re-exported here so planner modules keep one import path; there is no second parser.
"""

from __future__ import annotations

from glmops.contract.uris import StorageUri, UriError, UriRole, join_uri, parse_uri, pod_path

__all__ = ["StorageUri", "UriError", "UriRole", "join_uri", "parse_uri", "pod_path"]
