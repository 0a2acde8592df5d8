"""Argo CD's resource health checks of the chart (charts/glmops/files/argocd/*.lua), run by a real Lua.

Argo CD runs such a script with the live object as the global `obj` and reads the table it
returns (`status`, `message`); `health` does the same with lupa's Lua runtime, with only the
libraries Argo CD opens for it. `keep_captured` refreshes the status objects that
tests/chart/test_argocd_health.py checks without a cluster (tests/chart/data/argocd-status.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lupa

SCRIPTS = Path(__file__).resolve().parents[2] / "charts" / "glmops" / "files" / "argocd"
SCRIPT_OF = {
    "FineTuneJob": "finetunejob-health.lua",
    "ModelDeployment": "modeldeployment-health.lua",
    "SyntheticDataset": "syntheticdataset-health.lua",
}
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
CAPTURED = Path(__file__).parent / "data" / "argocd-status.json"
CAPTURE_ENV = "GLMOPS_CAPTURE_ARGOCD_STATUS"

# Argo CD opens only the package, base and table libraries and an `os` with time and date for a
# health script (unless resource.customizations.useOpenLibs is set): string.*, math.* or a string
# method raise there, and the resource shows as Unknown. The same sandbox here, so a test fails
# where Argo CD would.
SANDBOX = """
local safe_os = {time = os.time, date = os.date}
debug.setmetatable("", nil)
for _, name in ipairs({"string", "math", "io", "debug", "coroutine", "utf8"}) do
  _G[name] = nil
  package.loaded[name] = nil
end
os = safe_os
package.loaded.os = safe_os
"""


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) that Argo CD shows for `obj` (a glmops.io object as JSON)."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.execute(SANDBOX)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute((SCRIPTS / SCRIPT_OF[obj["kind"]]).read_text())
    status, message = str(result["status"]), str(result["message"] or "")
    assert status in ARGO_STATUSES, status
    return status, message


def keep_captured(plural: str, objects: list[dict[str, Any]], paths: dict[str, str]) -> None:
    """With GLMOPS_CAPTURE_ARGOCD_STATUS=1: store `objects` in tests/chart/data/argocd-status.json
    in place of the stored `plural` objects of the same names (other names and kinds stay).
    managedFields are dropped and each local path in `paths` is written as its stand-in."""
    if not os.environ.get(CAPTURE_ENV):
        return
    text = json.dumps(objects)
    for local, stand_in in sorted(paths.items(), key=lambda item: -len(item[0])):
        text = text.replace(local, stand_in)
    new = json.loads(text)
    for obj in new:
        obj["metadata"].pop("managedFields", None)
    names = {obj["metadata"]["name"] for obj in new}
    stored = json.loads(CAPTURED.read_text()) if CAPTURED.is_file() else {}
    stored[plural] = [obj for obj in stored.get(plural, []) if obj["metadata"]["name"] not in names] + new
    CAPTURED.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
