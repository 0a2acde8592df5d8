"""Deterministic names of the objects glmops creates. Pure."""

from __future__ import annotations

import hashlib

_MAX_LABEL = 63


def child_name(owner: str, suffix: str, max_length: int = _MAX_LABEL) -> str:
    """`owner-suffix`, shortened with a stable hash when it would exceed `max_length`."""
    name = f"{owner}-{suffix}"
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    keep = max_length - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-')}-{digest}-{suffix}"


def trainer_job_name(ftj: str) -> str:
    """The batch/v1 Job that runs the trainer. Its pods get 5-6 more characters, so stay <= 52."""
    return child_name(ftj, "trainer", max_length=52)


def trainer_rank_job_name(ftj: str, rank: int) -> str:
    """The Job of node rank `rank` in the per-rank form of a multi-node run (servers without Indexed
    Jobs). Its pod's hostname is this name too, so it must stay a DNS label: <= 52 like the others."""
    return child_name(ftj, f"trainer-r{rank}", max_length=52)


def trainer_service_name(ftj: str) -> str:
    """The headless Service that gives multi-node trainer pods stable DNS names."""
    return child_name(ftj, "trainer")


def export_job_name(ftj: str) -> str:
    """The batch/v1 Job that exports the trained adapter on CPU. Its pods get 5-6 more characters, so stay <= 52."""
    return child_name(ftj, "export", max_length=52)


def generator_job_name(dataset: str) -> str:
    """The batch/v1 Job that generates a SyntheticDataset. Its pods get 5-6 more characters, so stay <= 52."""
    return child_name(dataset, "generator", max_length=52)
