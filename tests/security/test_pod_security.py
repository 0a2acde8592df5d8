"""Every pod the operator makes passes Pod Security "restricted", and so does the operator's own.

The planner's objects are checked here without a cluster; the live pods of a labelled namespace
on the local cluster in tests/chart/test_chart_release.py. The checker itself is tested first:
each rule, broken on purpose, is reported.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from planner_outputs import planner_outputs
from pod_security import pod_spec_of, restricted_violations

from glmops_dev.chart import render

OUTPUTS = planner_outputs()
WORKLOADS = {name: obj for name, obj in OUTPUTS.items() if obj["kind"] in ("Job", "Deployment")}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_pod_the_operator_makes_is_restricted(name: str) -> None:
    assert restricted_violations(pod_spec_of(WORKLOADS[name])) == []


def test_the_operators_own_pod_is_restricted() -> None:
    (deployment,) = [o for o in render({}) if o["kind"] == "Deployment"]
    assert restricted_violations(pod_spec_of(deployment)) == []


def test_no_pod_mounts_the_api_token_or_runs_in_the_host_namespaces() -> None:
    """The trainer, export, download and servers never talk to the API: no token is mounted."""
    for name, obj in WORKLOADS.items():
        spec = pod_spec_of(obj)
        assert spec.get("automountServiceAccountToken") is False, name
        assert not any(spec.get(f) for f in ("hostNetwork", "hostPID", "hostIPC")), name


def _break(mutate: Any) -> list[str]:
    spec = copy.deepcopy(pod_spec_of(WORKLOADS["trainer-1gpu-job"]))
    mutate(spec, spec["containers"][0])
    return restricted_violations(spec)


@pytest.mark.parametrize(
    ("what", "mutate", "reported"),
    [
        ("privileged", lambda p, c: c["securityContext"].update(privileged=True), "privileged"),
        ("escalation", lambda p, c: c["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
        ("root", lambda p, c: (p["securityContext"].pop("runAsNonRoot"), c["securityContext"].pop("runAsNonRoot")), "runAsNonRoot"),
        ("uid 0", lambda p, c: c["securityContext"].update(runAsUser=0), "runAsUser is 0"),
        ("seccomp", lambda p, c: p["securityContext"].pop("seccompProfile"), "seccompProfile"),
        ("unconfined", lambda p, c: c["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccompProfile"),
        ("capabilities", lambda p, c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "adds capabilities"),
        ("no drop", lambda p, c: c["securityContext"].pop("capabilities"), "drop ALL"),
        ("hostPath", lambda p, c: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        ("hostNetwork", lambda p, c: p.update(hostNetwork=True), "hostNetwork"),
        ("hostPort", lambda p, c: c["ports"].append({"containerPort": 1, "hostPort": 80}), "hostPort"),
        ("sysctl", lambda p, c: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "sysctl"),
        ("nfs", lambda p, c: p["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}), "not allowed"),
    ],
)
def test_the_checker_reports_each_rule_broken(what: str, mutate: Any, reported: str) -> None:
    problems = _break(mutate)
    assert any(reported in p for p in problems), (what, problems)
