"""Argo CD's resource health checks of the chart (charts/glmops/files/argocd/*.lua), run by a real Lua.

Argo CD runs such a script with the live object as the global `obj` and reads the table it
returns (`status`, `message`); `health` does the same with lupa's Lua runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa

SCRIPTS = Path(__file__).resolve().parents[2] / "charts" / "glmops" / "files" / "argocd"
SCRIPT_OF = {"FineTuneJob": "finetunejob-health.lua", "ModelDeployment": "modeldeployment-health.lua"}
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) that Argo CD shows for `obj` (a FineTuneJob or ModelDeployment as JSON)."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute((SCRIPTS / SCRIPT_OF[obj["kind"]]).read_text())
    status, message = str(result["status"]), str(result["message"] or "")
    assert status in ARGO_STATUSES, status
    return status, message
