"""Argo CD's resource health checks of the chart (charts/glmops/files/argocd/*.lua), run by a real Lua.

Argo CD runs such a script with the live object as the global `obj` and reads the table it
returns (`status`, `message`); `health` does the same with lupa's Lua runtime, with only the
libraries Argo CD opens for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa

SCRIPTS = Path(__file__).resolve().parents[2] / "charts" / "glmops" / "files" / "argocd"
SCRIPT_OF = {
    "FineTuneJob": "finetunejob-health.lua",
    "ModelDeployment": "modeldeployment-health.lua",
}
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

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
