"""glmops: a Kubernetes operator that fine-tunes, exports and serves GLM-4.7."""
