"""Building blocks shared by every glmops resource: wire conventions, conditions, URIs, placement.

Every model here is the single definition of a piece of the CRDs: `glmops crds` turns them into
the OpenAPI schemas, so a docstring on a field is what `kubectl explain` prints.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "glmops.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class WireModel(BaseModel):
    """Base of every API model: camelCase on the wire, field docstrings become descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        use_enum_values=False,
        extra="forbid",
    )

    def to_wire(self) -> dict[str, object]:
        """Serialise as the apiserver stores it: camelCase, no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(WireModel):
    """Status is written by the operator; unknown keys from older versions are ignored on read."""

    model_config = ConfigDict(extra="ignore")


def uri_pattern(*schemes: str) -> str:
    """An RE2-compatible pattern that accepts `scheme://rest` for the given schemes."""
    return "^(" + "|".join(schemes) + ")://[^\\s]+$"


ModelUri = Annotated[
    str,
    Field(
        pattern=uri_pattern("hf", "s3", "pvc", "file"),
        max_length=1024,
        examples=["hf://zai-org/GLM-4.7-Flash", "pvc://models/glm-4.7-flash"],
    ),
]
DataUri = Annotated[str, Field(pattern=uri_pattern("hf", "s3", "pvc", "file"), max_length=1024)]
OutputUri = Annotated[str, Field(pattern=uri_pattern("s3", "pvc", "file"), max_length=1024)]

# RFC 1123 subdomain (Secret, PVC, ConfigMap and most object names).
DnsSubdomain = Annotated[
    str, Field(pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length=253)
]
# RFC 1123 label (names that become Service names, label values).
DnsLabel = Annotated[str, Field(pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(StatusModel):
    """A metav1.Condition: the latest observation of one aspect of the resource."""

    type: Annotated[str, Field(max_length=316)]
    """Condition type in CamelCase, e.g. `Succeeded`, `Ready`, `Validated`, `Scheduled`."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(max_length=1024)]
    """One CamelCase word that a program can match on, e.g. `GpuMemoryTooSmall`."""
    message: Annotated[str, Field(max_length=32768)] | None = None
    """What happened and, when something is wrong, which field to change and how."""
    last_transition_time: datetime
    """When the status last changed (RFC 3339)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation the condition was computed from."""


class TaintEffect(StrEnum):
    no_schedule = "NoSchedule"
    prefer_no_schedule = "PreferNoSchedule"
    no_execute = "NoExecute"


class Toleration(WireModel):
    """A core/v1 Toleration, merged into the pods that glmops creates."""

    key: str | None = None
    """Taint key to tolerate; empty with operator Exists tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """`Exists` matches any value; `Equal` needs `value` to match."""
    value: str | None = None
    """Taint value to match when operator is Equal."""
    effect: TaintEffect | None = None
    """Taint effect to match; empty matches every effect."""
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class Placement(WireModel):
    """Where pods may run, beyond the GPU constraints glmops derives itself."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    """Extra node labels every pod must match, merged with glmops' GPU affinity."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Extra tolerations; the `nvidia.com/gpu` NoSchedule toleration is always added."""
    gpu_product: Annotated[str, Field(max_length=128)] | None = None
    """Restrict to one GPU product (label `nvidia.com/gpu.product`), e.g. `NVIDIA-H200`."""
