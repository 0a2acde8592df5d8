"""Where a FineTuneJob's model, dataset and output are stored: credentials by reference, and what cannot work. Pure.

Each location may name a Secret (`credentialsSecret`) and, for S3-compatible stores, an
`endpointUrl`. The trainer pod references the Secret's keys through `secretKeyRef` (the kubelet
reads them when it starts the container; the operator never reads or copies them):

- the model's Secret under the standard names (`HF_TOKEN`, `AWS_ACCESS_KEY_ID`, ...), which is
  also what a dataset or output without a Secret of its own uses;
- the dataset's and the output's under `GLMOPS_DATASET_<KEY>` and `GLMOPS_OUTPUT_<KEY>`, so each
  may live in its own account or store;
- an `endpointUrl` as `GLMOPS_<LOCATION>_AWS_ENDPOINT_URL` (it wins over the Secret's
  AWS_ENDPOINT_URL key).

The trainer reads them in `glmops_trainer.storage` (same names).
"""

from __future__ import annotations

from typing import Any

from glmops.api.finetunejob import FineTuneJobSpec
from glmops.conditions import Reason

CREDENTIAL_KEYS = (
    "HF_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
)
"""Keys of a credentials Secret the trainer reads; each is optional in the Secret."""
ENDPOINT_KEY = "AWS_ENDPOINT_URL"


def _prefix(location: str) -> str:
    return f"GLMOPS_{location.upper()}_"


def credential_secrets(spec: FineTuneJobSpec) -> list[tuple[str, str]]:
    """(field path, Secret name) of every credentials Secret the job references."""
    named = (
        ("spec.model.credentialsSecret", spec.model.credentials_secret),
        ("spec.dataset.credentialsSecret", spec.dataset.credentials_secret),
        ("spec.output.credentialsSecret", spec.output.credentials_secret),
    )
    return [(field, name) for field, name in named if name]


def _secret_env(secret: str, prefix: str, skip: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    # Referenced, never copied: the kubelet reads the Secret when it starts the container.
    return [
        {"name": prefix + key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for key in CREDENTIAL_KEYS
        if key not in skip
    ]


def credential_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """The trainer container's env entries for the locations' Secrets and endpoints."""
    env: list[dict[str, Any]] = []
    locations = (
        ("model", spec.model.credentials_secret, spec.model.endpoint_url, ""),
        ("dataset", spec.dataset.credentials_secret, spec.dataset.endpoint_url, _prefix("dataset")),
        ("output", spec.output.credentials_secret, spec.output.endpoint_url, _prefix("output")),
    )
    for location, secret, endpoint, secret_prefix in locations:
        if secret:
            env += _secret_env(secret, secret_prefix, frozenset({ENDPOINT_KEY}) if endpoint else frozenset())
        if endpoint:
            env.append({"name": _prefix(location) + ENDPOINT_KEY, "value": endpoint})
    return env


def storage_problems(spec: FineTuneJobSpec) -> list[tuple[Reason, str, str]]:
    """(reason, field, message) for storage settings that cannot work (the CRD refuses most at apply time)."""
    problems: list[tuple[Reason, str, str]] = []
    if spec.output.destination.startswith("s3://") and spec.resources.nodes > 1:
        problems.append(
            (
                Reason.invalid_spec,
                "spec.output.destination",
                (
                    "an s3:// destination is staged in each pod's scratch volume, so it needs resources.nodes: 1 "
                    f"(this job asks for {spec.resources.nodes}); write multi-node runs to a ReadWriteMany pvc://"
                ),
            )
        )
    for field, uri, endpoint in (
        ("spec.model.endpointUrl", spec.model.source, spec.model.endpoint_url),
        ("spec.dataset.endpointUrl", spec.dataset.source, spec.dataset.endpoint_url),
        ("spec.output.endpointUrl", spec.output.destination, spec.output.endpoint_url),
    ):
        if endpoint and not uri.startswith("s3://"):
            problems.append(
                (
                    Reason.invalid_spec,
                    field,
                    (
                        f"an endpoint applies to s3:// locations only, and this one is {uri.split('://', 1)[0]}://; "
                        "remove endpointUrl"
                    ),
                )
            )
    return problems
