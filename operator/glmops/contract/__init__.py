"""The contract between the operator and the trainer: one definition of each thing both sides read.

- `uris`: the storage URI grammar (CRD patterns, the operator's parser, the trainer's parser).
- `config`: the trainer's config file, rendered by the operator and read by the trainer.
- `records`: the progress record (served as Prometheus metrics) and the result record (the
  container's termination message).

Pure: these modules import only the standard library and pydantic, never torch, kopf or a
Kubernetes client, so the operator image stays light and the trainer image needs nothing more.
"""
