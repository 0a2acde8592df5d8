"""kopf handlers; importing this package registers them."""

from glmops.handlers import finetunejob, modeldeployment, startup, syntheticdataset

__all__ = ["finetunejob", "modeldeployment", "startup", "syntheticdataset"]
