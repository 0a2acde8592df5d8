"""Kubernetes resource quantities (`1.5Gi`, `500m`, `2e3`) as exact decimals. Pure.

Resource requests are scaled per GPU and summed per pod; floats would turn `1.5Gi` x 3 into a
value the apiserver rounds differently, and string tricks (keeping the digits) turn `1.5Gi` x 8
into `1205Gi`. Here every quantity is a `Decimal` and results are written back in the largest
suffix of the same family that keeps them whole.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def parse_quantity(text: str) -> Decimal:
    """The exact value of a quantity (`1.5Gi` -> 1610612736, `500m` -> 0.5)."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity (e.g. 32Gi, 500m, 4)")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        value = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimal numbers
        raise QuantityError(f"{text!r} is not a Kubernetes quantity") from None
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return value * Decimal(10) ** int(suffix[1:])
    return value * _DECIMAL[suffix]


def _suffix_of(text: str) -> str:
    match = _QUANTITY.match(text.strip())
    return (match.group(2) or "") if match else ""


def format_quantity(value: Decimal, like: str = "") -> str:
    """`value` written with the suffix family of `like` (binary or decimal), in the largest suffix that keeps it whole."""
    if value < 0:
        raise QuantityError(f"resource quantities are not negative (got {value})")
    binary = _suffix_of(like) in _BINARY
    if binary:
        for suffix, factor in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
            scaled = value / factor
            if scaled == scaled.to_integral_value() and scaled >= 1:
                return f"{int(scaled)}{suffix}"
        if value == value.to_integral_value():
            return str(int(value))
        # A fraction of a byte means nothing: round up to whole bytes.
        return str(int(value.to_integral_value(rounding="ROUND_CEILING")))
    for suffix in ("E", "P", "T", "G", "M", "k", "", "m", "u", "n"):
        scaled = value / _DECIMAL[suffix]
        if scaled == scaled.to_integral_value() and (scaled >= 1 or suffix == "n"):
            return f"{int(scaled)}{suffix}"
    return f"{int((value / _DECIMAL['n']).to_integral_value(rounding='ROUND_CEILING'))}n"


def scale_quantity(quantity: str, factor: int | Decimal) -> str:
    """`quantity` x `factor`, exactly, in the same suffix family (`1.5Gi` x 8 -> `12Gi`, `500m` x 3 -> `1500m`)."""
    return format_quantity(parse_quantity(quantity) * Decimal(factor), like=quantity)


def bytes_quantity(size_bytes: int | Decimal, round_to: str = "1Gi") -> str:
    """A byte count as a binary quantity, rounded up to whole multiples of `round_to`."""
    step = parse_quantity(round_to)
    whole = (Decimal(size_bytes) / step).to_integral_value(rounding="ROUND_CEILING") * step
    return format_quantity(whole, like="1Gi")
