"""Building blocks shared by every glmops resource: wire conventions, conditions, URIs, placement.

Every model here is the single definition of a piece of the CRDs: `glmops crds` turns them into
the OpenAPI schemas, so a docstring on a field is what `kubectl explain` prints.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from glmops.contract.uris import MAX_URI_LENGTH, UriRole, finetune_dataset_pattern, pattern

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


def _uri(role: UriRole, *examples: str) -> Any:
    # The grammar of glmops.contract.uris, as the CRD pattern: the apiserver refuses what the
    # operator and the trainer could not parse.
    return Field(pattern=pattern(role), max_length=MAX_URI_LENGTH, examples=list(examples))


ModelUri = Annotated[str, _uri(UriRole.model, "hf://zai-org/GLM-4.7-Flash", "pvc://models/glm-4.7-flash")]
"""A model: a checkpoint folder or one file (a GGUF)."""
DatasetUri = Annotated[str, _uri(UriRole.dataset, "pvc://datasets/payments/train.jsonl", "s3://ml-data/payments/train.jsonl")]
"""One file that is read."""
TrainingDatasetUri = Annotated[
    str,
    Field(
        pattern=finetune_dataset_pattern(),
        max_length=MAX_URI_LENGTH,
        examples=["pvc://datasets/payments/train.jsonl", "synthetic://payments-synth"],
    ),
]
"""A FineTuneJob's dataset: one file that is read, or synthetic://NAME (a SyntheticDataset's output)."""
OutputUri = Annotated[str, _uri(UriRole.output, "pvc://models/payments-coder", "s3://ml-artifacts/payments-coder")]
"""A folder that is written."""

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


# Kubernetes' label syntax: a value (<= 63 characters, alphanumeric at both ends, '-', '_', '.'
# inside; empty allowed) and a key (an optional DNS-subdomain prefix and '/', then a name like a
# value but not empty). Taint keys and values follow the same rules.
LABEL_VALUE_PATTERN = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY_PATTERN = (
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]
LabelKey = Annotated[str, Field(pattern=LABEL_KEY_PATTERN, max_length=316)]
# Map keys cannot carry a pattern in a structural schema: a CEL rule checks them on clusters that
# run CEL, and the operator's validation everywhere.
LABEL_KEYS_RULE = {
    "rule": "self.all(k, k.matches('" + LABEL_KEY_PATTERN.replace("\\", "\\\\") + "'))",
    "message": "every key must be a label key: an optional DNS prefix and '/', then up to 63 of [A-Za-z0-9-_.], alphanumeric at both ends",
}


class Toleration(WireModel):
    """A core/v1 Toleration, merged into the pods that glmops creates."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                 "message": "value must be empty when operator is Exists"},
                {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                 "message": "tolerationSeconds applies only to effect NoExecute"},
            ]
        }
    )

    key: LabelKey | None = None
    """Taint key to tolerate; empty with operator Exists tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """`Exists` matches any value; `Equal` needs `value` to match."""
    value: LabelValue | None = None
    """Taint value to match when operator is Equal (a label value: <= 63 characters)."""
    effect: TaintEffect | None = None
    """Taint effect to match; empty matches every effect."""
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class Placement(WireModel):
    """Where pods may run, beyond the GPU constraints glmops derives itself."""

    node_selector: Annotated[
        # maxProperties bounds the CEL rule's cost, which the apiserver refuses to admit unbounded.
        dict[str, LabelValue], Field(max_length=32, json_schema_extra={"x-kubernetes-validations": [LABEL_KEYS_RULE]})
    ] = Field(default_factory=dict)
    """Extra node labels every pod must match (label keys and values), merged with glmops' GPU affinity."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Extra tolerations; the `nvidia.com/gpu` NoSchedule toleration is always added."""
    gpu_product: LabelValue | None = None
    """Restrict to one GPU product (label `nvidia.com/gpu.product`, so a label value), e.g. `NVIDIA-H200`."""
