"""kopf handlers; importing this package registers them."""

from glmops.handlers import finetunejob, startup

__all__ = ["finetunejob", "startup"]
