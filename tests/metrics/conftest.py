"""Helpers of the metrics tests: a metrics page parsed by prometheus_client, as Prometheus reads it."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_page(page: str) -> tuple[Samples, dict[str, str]]:
    """(name -> {sorted labels: value}, family name -> type) of a text exposition."""
    samples: Samples = {}
    kinds: dict[str, str] = {}
    for family in text_string_to_metric_families(page):
        kinds[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples, kinds


def scrape(url: str) -> tuple[Samples, dict[str, str]] | None:
    """The parsed page at `url`; None while nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return parse_page(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None
