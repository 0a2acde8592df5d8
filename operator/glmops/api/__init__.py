"""The glmops API: pydantic models of every custom resource, the one source of the CRDs.

This package imports neither kopf nor a Kubernetes client.
"""
