"""The Helm chart's values, defined once: `values.yaml` (a comment per value) and `values.schema.json`
are both generated from :data:`VALUES`.

    python -m glmops_dev.chart values [--check]    write (or check) charts/glmops/values.{yaml,schema.json}

A value is a :class:`Value` (a leaf: default, JSON schema, description) or a :class:`Group` (a
mapping of named children). The operator's own settings (`glmops.settings.Settings`) are offered
under `settings`: their names, types and descriptions come from that class, so a setting added
to the operator shows up in the chart's schema without a second list to keep in step.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from glmops.settings import Settings

IMAGE_SETTINGS = {"trainer_image": "trainer", "llamacpp_image": "llamacpp", "vllm_image": "vllm"}
"""Settings that the chart sets from `images.*` (repository + tag), not from `settings`."""
CHART_SETTINGS = {"trainer_metrics_port"}
"""Settings a platform team has no reason to change in a chart (the trainer's port is internal)."""
_TAG = {"type": "string", "minLength": 1, "not": {"const": "latest"}}
_QUANTITY = {"type": ["string", "integer", "number"]}
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}


@dataclass(frozen=True)
class Value:
    """One leaf of values.yaml."""

    default: Any
    description: str
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class Group:
    """A mapping of values; `extra` allows keys beyond the declared ones (a free-form map)."""

    description: str
    children: Mapping[str, Value | Group] = field(default_factory=dict)


def _image(repository: str, tag: str, what: str) -> Group:
    return Group(
        f"{what}. Tags are pinned: never `latest`, so a restart never changes what runs.",
        {
            "repository": Value(repository, "Image repository.", {"type": "string", "minLength": 1}),
            "tag": Value(tag, "Image tag (pinned).", _TAG),
        },
    )


def _split_image(reference: str) -> tuple[str, str]:
    repository, _, tag = reference.rpartition(":")
    return repository, tag


def settings_docs() -> dict[str, str]:
    """Each Settings field's docstring (the string literal under it in glmops/settings.py)."""
    tree = ast.parse(inspect.getsource(Settings))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in itertools.pairwise(body):
        documented = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and documented:
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def camel(snake: str) -> str:
    """`trainer_metrics_port` -> `trainerMetricsPort` (the values key of a setting)."""
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def chart_settings() -> dict[str, str]:
    """The `settings` keys of the chart and the operator's environment variable of each
    (`placementCheck` -> GLMOPS_PLACEMENT_CHECK), in the order Settings declares them."""
    return {
        camel(f.name): f"GLMOPS_{f.name.upper()}"
        for f in fields(Settings)
        if f.name not in IMAGE_SETTINGS and f.name not in CHART_SETTINGS
    }


def _settings_group() -> Group:
    docs = settings_docs()
    defaults = Settings()
    children: dict[str, Value | Group] = {}
    env_names = chart_settings()
    for f in fields(Settings):
        if camel(f.name) not in env_names:
            continue
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            schema: dict[str, Any] = {"type": "boolean"}
        elif isinstance(default, int):
            schema = {"type": "integer", "minimum": 0}
        elif isinstance(default, float):
            schema = {"type": "number", "minimum": 0}
        elif isinstance(default, Mapping):
            schema = {"type": "object", "additionalProperties": {"type": "string"}}
        else:
            schema = {"type": "string"}
        if f.name == "placement_check":
            schema = {"type": "string", "enum": ["strict", "advisory"]}
        env = env_names[camel(f.name)]
        children[camel(f.name)] = Value(None, f"{docs.get(f.name, '')} ({env}; default {default!r})", schema)
    return Group(
        "Operator settings (GLMOPS_* environment variables, glmops.settings.Settings). Unset values keep "
        "the operator's defaults; only the keys listed in values.schema.json are accepted.",
        children,
    )


def build_values() -> Group:
    """The chart's values: every key, its default, its schema and what it means."""
    settings = Settings()
    trainer, llamacpp, vllm = (_split_image(getattr(settings, name)) for name in IMAGE_SETTINGS)
    return Group(
        "Values of the glmops chart.",
        {
            "image": Group(
                "The operator's image (Dockerfile at the repository root).",
                {
                    "repository": Value("ghcr.io/glmops/operator", "Image repository.", {"type": "string", "minLength": 1}),
                    "tag": Value("0.1.0", "Image tag (pinned; the chart's appVersion).", _TAG),
                    "pullPolicy": Value(
                        "IfNotPresent", "When the kubelet pulls the image.",
                        {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]},
                    ),
                },
            ),
            "imagePullSecrets": Value(
                [], "Names of Secrets for pulling the operator's image from a private registry.",
                {"type": "array", "items": _NAME},
            ),
            "images": Group(
                "Images of the pods the operator creates (set as GLMOPS_TRAINER_IMAGE, GLMOPS_LLAMACPP_IMAGE, GLMOPS_VLLM_IMAGE).",
                {
                    "trainer": _image(*trainer, "Trainer and export pods (trainer_image/Dockerfile)"),
                    "llamacpp": _image(*llamacpp, "llama.cpp server for ModelDeployments with runtime llamacpp"),
                    "vllm": _image(*vllm, "vLLM's OpenAI server for ModelDeployments with runtime vllm"),
                },
            ),
            "replicaCount": Value(
                2, "Operator replicas. With leader election one is active and the others stand by; without it, keep 1.",
                {"type": "integer", "minimum": 1, "maximum": 5},
            ),
            "leaderElection": Group(
                "One active replica, chosen through a coordination.k8s.io Lease in the release namespace.",
                {
                    "enabled": Value(True, "Elect a leader; required when replicaCount > 1.", {"type": "boolean"}),
                    "leaseName": Value("", "Name of the Lease (default: the release's full name).", {"type": "string"}),
                    "leaseDurationSeconds": Value(
                        15, "How long a standby waits after the leader's last renewal before taking over.",
                        {"type": "integer", "minimum": 5, "maximum": 300},
                    ),
                    "renewDeadlineSeconds": Value(
                        10, "The leader stops (and restarts as a standby) when it could not renew for this long; below leaseDurationSeconds.",
                        {"type": "integer", "minimum": 2, "maximum": 290},
                    ),
                    "retryPeriodSeconds": Value(
                        2, "How often the leader renews and a standby tries to acquire.",
                        {"type": "integer", "minimum": 1, "maximum": 60},
                    ),
                },
            ),
            "watchNamespaces": Value(
                [],
                "Namespaces the operator serves. Empty: every namespace (a ClusterRole). A list: only those "
                "(a Role and RoleBinding in each; the operator keeps only read access to nodes and CRDs cluster-wide).",
                {"type": "array", "items": _NAME, "uniqueItems": True},
            ),
            "crds": Group(
                "The FineTuneJob and ModelDeployment CRDs, rendered as templates so that `helm upgrade` upgrades them.",
                {
                    "install": Value(
                        True, "Install and upgrade the CRDs with the release (false: they are managed elsewhere).",
                        {"type": "boolean"},
                    ),
                    "keep": Value(
                        True,
                        "Keep the CRDs (and so every FineTuneJob and ModelDeployment) when the release is uninstalled "
                        "(annotation helm.sh/resource-policy: keep).",
                        {"type": "boolean"},
                    ),
                },
            ),
            "rbac": Group(
                "Roles of the operator's ServiceAccount.",
                {"create": Value(True, "Create the ClusterRole/Roles and their bindings.", {"type": "boolean"})},
            ),
            "serviceAccount": Group(
                "The operator's ServiceAccount.",
                {
                    "create": Value(True, "Create it (false: use an existing one named below).", {"type": "boolean"}),
                    "name": Value("", "Its name (default: the release's full name).", {"type": "string"}),
                    "annotations": Value(
                        {}, "Annotations (e.g. a cloud IAM role binding).",
                        {"type": "object", "additionalProperties": {"type": "string"}},
                    ),
                },
            ),
            "settings": _settings_group(),
            "logVerbose": Value(False, "Log every handler call (kopf's --verbose).", {"type": "boolean"}),
            "tmpDir": Value(
                "/tmp",
                "Where the operator's scratch emptyDir is mounted (the root filesystem is read-only); TMPDIR points there.",
                {"type": "string", "pattern": "^/.+"},
            ),
            "resources": Value(
                {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                "CPU and memory of each operator replica.",
                {
                    "type": "object",
                    "properties": {
                        "requests": {"type": "object", "additionalProperties": _QUANTITY},
                        "limits": {"type": "object", "additionalProperties": _QUANTITY},
                    },
                    "additionalProperties": False,
                },
            ),
            "metrics": Group(
                "The operator's Prometheus metrics.",
                {
                    "enabled": Value(True, "Expose the metrics port and create the metrics Service.", {"type": "boolean"}),
                    "port": Value(
                        8080, "Port the operator serves metrics on (GLMOPS_METRICS_PORT).",
                        {"type": "integer", "minimum": 1024, "maximum": 65535},
                    ),
                    "path": Value("/metrics", "HTTP path of the metrics.", {"type": "string", "pattern": "^/"}),
                    "service": Group(
                        "The metrics Service.",
                        {
                            "port": Value(8080, "Service port.", {"type": "integer", "minimum": 1, "maximum": 65535}),
                            "annotations": Value(
                                {}, "Annotations of the Service.", {"type": "object", "additionalProperties": {"type": "string"}}
                            ),
                        },
                    ),
                    "serviceMonitor": Group(
                        "A Prometheus Operator ServiceMonitor for the metrics Service.",
                        {
                            "enabled": Value(False, "Create it (needs the monitoring.coreos.com CRDs).", {"type": "boolean"}),
                            "interval": Value("30s", "Scrape interval.", {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"}),
                            "labels": Value(
                                {}, "Labels the Prometheus instance selects ServiceMonitors by.",
                                {"type": "object", "additionalProperties": {"type": "string"}},
                            ),
                        },
                    ),
                },
            ),
            "health": Group(
                "Liveness and readiness endpoints (/healthz, /readyz), served by every replica, leader or standby.",
                {"port": Value(8081, "Port of the health endpoints.", {"type": "integer", "minimum": 1024, "maximum": 65535})},
            ),
            "networkPolicy": Group(
                "A NetworkPolicy that lets connections reach the operator's pods on their metrics and health ports only.",
                {
                    "enabled": Value(True, "Create it (needs a network plugin that enforces NetworkPolicy to take effect).", {"type": "boolean"}),
                    "metricsFrom": Value(
                        [], "NetworkPolicyPeers allowed to connect (empty: any source, on those two ports only).",
                        {"type": "array", "items": {"type": "object"}},
                    ),
                },
            ),
            "podDisruptionBudget": Group(
                "Keeps a replica running through voluntary disruptions (node drains).",
                {
                    "enabled": Value(True, "Create it (only when replicaCount > 1).", {"type": "boolean"}),
                    "minAvailable": Value(1, "Replicas that must stay.", {"type": "integer", "minimum": 1}),
                },
            ),
            "podAnnotations": Value({}, "Annotations of the operator's pods.", {"type": "object", "additionalProperties": {"type": "string"}}),
            "podLabels": Value({}, "Extra labels of the operator's pods.", {"type": "object", "additionalProperties": {"type": "string"}}),
            "priorityClassName": Value("", "PriorityClass of the operator's pods.", {"type": "string"}),
            "nodeSelector": Value({}, "Node labels the operator's pods require.", {"type": "object", "additionalProperties": {"type": "string"}}),
            "tolerations": Value([], "Tolerations of the operator's pods.", {"type": "array", "items": {"type": "object"}}),
            "affinity": Value(
                {}, "Affinity of the operator's pods (default: replicas preferably on different nodes).", {"type": "object"}
            ),
            "extraEnv": Value(
                [], "Extra environment variables of the operator container (EnvVar objects).",
                {"type": "array", "items": {"type": "object", "required": ["name"]}},
            ),
        },
    )


VALUES = build_values()


def defaults(group: Group = VALUES) -> dict[str, Any]:
    """values.yaml as data; settings left unset are omitted."""
    result: dict[str, Any] = {}
    for key, child in group.children.items():
        if isinstance(child, Group):
            result[key] = defaults(child)
        elif child.default is not None:
            result[key] = child.default
    return result


def json_schema(group: Group = VALUES, top: bool = True) -> dict[str, Any]:
    """values.schema.json: every key typed and described; unknown keys are refused (typos fail)."""
    properties: dict[str, Any] = {}
    for key, child in group.children.items():
        if isinstance(child, Group):
            properties[key] = json_schema(child, top=False)
        else:
            properties[key] = {**child.schema, "description": child.description}
    schema: dict[str, Any] = {"type": "object", "description": group.description, "properties": properties, "additionalProperties": False}
    if top:
        schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "glmops chart values", **schema}
    return schema


def _wrap(text: str, indent: str, width: int = 100, prefix: str = "# ") -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(indent) + len(prefix) + len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return [f"{indent}{prefix}{item}" for item in lines]


def _scalar(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | bool | int | float) or value in ([], {}) else ""


def values_yaml(group: Group = VALUES, indent: str = "") -> str:
    """values.yaml with the description of each value as a comment above it."""
    out: list[str] = []
    if not indent:
        out += ["# Generated by `python -m glmops_dev.chart values` from glmops_dev/chart/values.py; do not edit by hand.",
                "# values.schema.json, generated from the same source, checks every value.", ""]
    for key, child in group.children.items():
        out += _wrap(child.description, indent)
        if isinstance(child, Group):
            if not child.children or all(isinstance(c, Value) and c.default is None for c in child.children.values()):
                out.append(f"{indent}{key}: {{}}")
                for sub_key, sub in child.children.items():
                    assert isinstance(sub, Value)
                    out.append(f"{indent}  # {sub_key}:")
                    out += _wrap(sub.description, indent + "  ", prefix="#   ")
            else:
                out.append(f"{indent}{key}:")
                out.append(values_yaml(child, indent + "  ").rstrip("\n"))
        else:
            text = _scalar(child.default)
            if text:
                out.append(f"{indent}{key}: {text}")
            else:
                import yaml

                block = yaml.safe_dump({key: child.default}, default_flow_style=False, sort_keys=False)
                out += [indent + line for line in block.rstrip("\n").splitlines()]
        if not indent:
            out.append("")
    return "\n".join(out) + "\n"


def settings_template() -> str:
    """templates/_settings.tpl: the environment variable of each `settings` key, as JSON for the Deployment."""
    return (
        "{{/* Generated by `python -m glmops_dev.chart values` from glmops.settings.Settings; do not edit by hand. */}}\n"
        "{{- define \"glmops.settingsEnv\" -}}\n"
        + json.dumps(chart_settings(), sort_keys=True)
        + "\n{{- end }}\n"
    )


def schema_json() -> str:
    """The text of values.schema.json."""
    return json.dumps(json_schema(), indent=2) + "\n"
