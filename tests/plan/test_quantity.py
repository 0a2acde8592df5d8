"""Resource quantities are scaled exactly, in the unit family they were written in."""

from __future__ import annotations

from decimal import Decimal

import pytest

from glmops.plan.quantity import QuantityError, bytes_quantity, parse_quantity, scale_quantity


@pytest.mark.parametrize(
    ("quantity", "factor", "expected"),
    [
        ("32Gi", 8, "256Gi"),
        ("1.5Gi", 8, "12Gi"),  # digits-only arithmetic made this 1205Gi
        ("1.5Gi", 3, "4608Mi"),  # not whole in Gi: the next smaller binary unit
        ("0.5Gi", 1, "512Mi"),
        ("500m", 3, "1500m"),  # was left unscaled
        ("250m", 4, "1"),
        ("0.5", 3, "1500m"),
        ("4", 8, "32"),
        ("1G", 2, "2G"),
        ("1e3", 2, "2k"),
        ("100Mi", 16, "1600Mi"),
        ("1Ki", 1024, "1Mi"),
    ],
)
def test_scale_quantity(quantity: str, factor: int, expected: str) -> None:
    assert scale_quantity(quantity, factor) == expected
    assert parse_quantity(expected) == parse_quantity(quantity) * factor  # the same amount, exactly


@pytest.mark.parametrize(
    ("text", "value"),
    [("1.5Gi", Decimal(3 * 2**29)), ("500m", Decimal("0.5")), ("2e3", Decimal(2000)), ("12Mi", Decimal(12 * 2**20)), ("7", Decimal(7))],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("bad", ["", "Gi", "1.5 Gi", "12gb", "-"])
def test_malformed_quantities_are_refused(bad: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)


def test_bytes_round_up_to_whole_gibibytes() -> None:
    assert bytes_quantity(5 * 2**30) == "5Gi"
    assert bytes_quantity(5 * 2**30 + 1) == "6Gi"
    assert bytes_quantity(1) == "1Gi"
