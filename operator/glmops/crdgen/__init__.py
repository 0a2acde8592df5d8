"""CRD generation: the API models become structural CustomResourceDefinitions."""

from glmops.crdgen.crd import KINDS, build_crd, render_crd_yaml, stale_crds, write_crds
from glmops.crdgen.schema import SchemaError, to_structural

__all__ = ["KINDS", "SchemaError", "build_crd", "render_crd_yaml", "stale_crds", "to_structural", "write_crds"]
