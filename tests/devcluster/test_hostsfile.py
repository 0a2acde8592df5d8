"""The host's hosts file is edited without pulling it from under the pods that bind their own."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from glmops_dev.network.hostsfile import HOSTS_PATH_ENV, set_block


def test_a_pods_own_hosts_file_stays_bound_when_the_hosts_block_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pod binds its own file over /etc/hosts in a mount namespace of its own (its name on
    its IP, which gloo and torchrun need). Replacing the host's file by a rename would detach those
    binds (the kernel drops mounts on a dentry renamed over in another namespace), and the pods
    would see the host's names instead of their own."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n")
    pod_hosts = tmp_path / "pod-hosts"
    pod_hosts.write_text("100.64.128.9\tpod-a.svc-a\tpod-a\n")
    monkeypatch.setenv(HOSTS_PATH_ENV, str(hosts))
    script = f"mount --bind {pod_hosts} {hosts} && echo bound && read _ && cat {hosts}"
    pod = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert pod.stdout is not None and pod.stdout.readline().strip() == "bound", pod.stderr.read() if pod.stderr else ""
        inode = hosts.stat().st_ino
        set_block(tmp_path / "hosts.lock", "glmops test slot", ["100.64.64.9\tweb.ns.svc\tweb.ns.svc.cluster.local"])
        seen_by_pod, _ = pod.communicate("\n", timeout=30)
    finally:
        if pod.poll() is None:
            pod.kill()
            pod.wait()
    assert seen_by_pod == "100.64.128.9\tpod-a.svc-a\tpod-a\n"
    # The host's own file got the block, in the same file.
    assert "web.ns.svc" in hosts.read_text() and hosts.read_text().startswith("127.0.0.1\tlocalhost\n")
    assert hosts.stat().st_ino == inode
