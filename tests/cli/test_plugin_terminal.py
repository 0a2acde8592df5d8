"""`kubectl glmops` against the real API server, drawn in a real terminal (tmux).

The FineTuneJob's status is written here through the status subresource, as the operator writes
it, so the test decides when the progress moves; what the plugin shows is read off tmux's
screen. `logs` runs a real pod on the node agent and streams its log through kubectl.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from polling import wait_for

GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"


def _create_job(cluster: Any, namespace: str, name: str) -> None:
    client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {"model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash"},
                 "dataset": {"source": "pvc://datasets/agent.jsonl"},
                 "output": {"destination": f"pvc://models/{name}", "formats": ["adapter"]}},
    })  # fmt: skip


def _set_status(cluster: Any, namespace: str, name: str, status: dict[str, Any]) -> None:
    client.CustomObjectsApi(cluster.api_client()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}
    )


def _training(step: int, total: int, loss: float) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    progress = {"step": step, "totalSteps": total, "percent": 100 * step // total, "loss": loss,
                "tokensPerSecond": 5100.0, "etaSeconds": (total - step) * 6, "updatedAt": now}  # fmt: skip
    return {"phase": "Training", "progress": progress}


def _env(cluster: Any) -> dict[str, str]:
    kubectl_dir = str(Path(cluster.kubectl_path).parent)
    return {"KUBECONFIG": str(cluster.kubeconfig), "PATH": f"{kubectl_dir}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root")}


def _bar_fill(screen: str) -> int:
    line = next(line for line in screen.splitlines() if "[" in line and "]" in line)
    return line[line.index("[") + 1 : line.index("]")].count("#")


def test_watch_draws_a_bar_that_moves_in_place_and_ends_with_the_job(
    cluster: Any, namespace: str, terminal: Any, plugin_command: list[str]
) -> None:
    _create_job(cluster, namespace, "coder")
    _set_status(cluster, namespace, "coder", _training(3, 20, 1.2345))

    terminal.start([*plugin_command, "watch", "coder", "-n", namespace, "--interval", "0.3"], _env(cluster))

    first = terminal.wait_for("step 3 of 20", lambda s: "3/20" in s)
    assert "loss 1.2345" in first and "5,100 tok/s" in first and "ETA 1m" in first
    _set_status(cluster, namespace, "coder", _training(12, 20, 0.4321))
    second = terminal.wait_for("step 12 of 20", lambda s: "12/20" in s)
    assert _bar_fill(second) > _bar_fill(first)
    assert "loss 0.4321" in second and "3/20" not in second
    assert len([line for line in second.splitlines() if line.strip()]) == 1  # redrawn in place, not appended

    _set_status(cluster, namespace, "coder", {"phase": "Succeeded"})
    done = terminal.wait_for("the watch to end", lambda s: terminal.exited())
    assert "Succeeded" in done and "done" in done
    assert terminal.exit_status() == 0


def test_status_lists_the_job_with_its_bar_in_a_terminal(
    cluster: Any, namespace: str, terminal: Any, plugin_command: list[str]
) -> None:
    _create_job(cluster, namespace, "coder")
    _create_job(cluster, namespace, "waiting")
    _set_status(cluster, namespace, "coder", _training(10, 20, 0.5))

    terminal.start([*plugin_command, "status", "-n", namespace], _env(cluster))

    screen = terminal.wait_for("the status page", lambda s: terminal.exited() and "No ModelDeployments." in s)
    lines = screen.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("FINETUNEJOB"))
    assert lines[header].split() == ["FINETUNEJOB", "PHASE", "PROGRESS"]
    assert lines[header + 1].split()[:4] == ["coder", "Training", "[############------------]", "10/20"]
    assert lines[header + 2].split()[0] == "waiting"
    assert "No ModelDeployments." in screen


def test_logs_streams_the_trainer_pods_log(cluster: Any, node_agent: Any, namespace: str, plugin_command: list[str]) -> None:
    batch = client.BatchV1Api(cluster.api_client())
    batch.create_namespaced_job(namespace, {
        "metadata": {"name": "coder-trainer"},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "trainer", "image": "ghcr.io/glmops/trainer:test",
            "command": ["python", "-c", "print('step 1 of 2'); print('step 2 of 2')"]}]}}},
    })  # fmt: skip
    _create_job(cluster, namespace, "coder")
    _set_status(cluster, namespace, "coder", {"phase": "Training", "trainerJob": "coder-trainer"})

    def finished() -> bool:
        job = batch.read_namespaced_job("coder-trainer", namespace)
        return bool(job.status.succeeded)

    wait_for("the trainer pod to finish", finished, 120)
    result = subprocess.run(
        [*plugin_command, "logs", "coder", "-n", namespace], env={**os.environ, **_env(cluster)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["step 1 of 2", "step 2 of 2"]

    no_export = subprocess.run(
        [*plugin_command, "logs", "coder", "-n", namespace, "--export"], env={**os.environ, **_env(cluster)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert no_export.returncode == 1 and "coder has no export Job yet (phase Training" in no_export.stderr
