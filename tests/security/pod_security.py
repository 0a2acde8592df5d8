"""The Pod Security Standards' "restricted" profile, as a check of a pod spec.

Kubernetes 1.20 (the local control plane) has no PodSecurity admission (it came in 1.22, GA in
1.25), so a namespace labelled `pod-security.kubernetes.io/enforce=restricted` is not enforced
there; this module checks the same rules (baseline and restricted, as the Pod Security Standards
page lists them) so the tests can hold every pod the operator makes to them, on any server.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def pod_spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod spec inside a Pod, Job, Deployment, StatefulSet, DaemonSet or ReplicaSet."""
    if obj["kind"] == "Pod":
        return obj["spec"]
    return obj["spec"]["template"]["spec"]


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(key) or []:
            yield f"{key}[{container.get('name')}]", container


def restricted_violations(spec: Mapping[str, Any]) -> list[str]:
    """Every rule of the restricted profile (baseline included) that the pod spec breaks."""
    problems: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    # baseline
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field} is true")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            problems.append(f"volume {volume['name']}: hostPath")
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds - RESTRICTED_VOLUMES)} not allowed")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')} is not safe")
    if (pod_sc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
        problems.append("pod seLinuxOptions.type not allowed")
    if (pod_sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append("pod seccompProfile Unconfined")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    for where, container in _containers(spec):
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        caps = sc.get("capabilities") or {}
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {sorted(set(caps.get('add')) - {'NET_BIND_SERVICE'})}")
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: does not drop ALL capabilities")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: procMount {sc['procMount']}")
        if (sc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
            problems.append(f"{where}: seLinuxOptions.type not allowed")
        # restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if not (sc.get("runAsNonRoot") is True or (pod_non_root and sc.get("runAsNonRoot") is not False)):
            problems.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp == "Unconfined" or not (seccomp in ("RuntimeDefault", "Localhost") or (pod_seccomp and seccomp is None)):
            problems.append(f"{where}: seccompProfile is not RuntimeDefault or Localhost")
    return problems
