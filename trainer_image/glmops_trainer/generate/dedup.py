"""Duplicate removal: exact (identical samples) and near (MinHash LSH over word 5-grams).

Samples are compared in prompt order, so the first of a group stays and the result does not
depend on which request finished first. An exact duplicate has the same messages and tools (ids
and metadata aside). A near duplicate is judged on the text that differs between samples (user,
assistant and tool messages; the system prompt and the tool schemas are shared boilerplate and
would make unrelated samples look alike): the Jaccard similarity of the sets of word 5-grams,
estimated with one-permutation MinHash (Li, Owen and Zhang, 2012: one hash per shingle, the
minimum per bin) and found through LSH bands, so the cost grows with the number of samples, not
with its square.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections import defaultdict
from typing import Any

SHINGLE_WORDS = 5
BINS = 128
ROWS_PER_BAND = 4
"""128 bins in 32 bands of 4: two samples of similarity 0.9 share a band with probability ~1, of 0.5 with ~0.87; candidates are then checked on all bins."""
_WORD = re.compile(r"\w+", re.UNICODE)


def exact_key(record: dict[str, Any]) -> str:
    """A digest of what a sample teaches: its messages and tools, independent of id and metadata."""
    canonical = json.dumps({"messages": record.get("messages"), "tools": record.get("tools")}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def comparable_text(record: dict[str, Any]) -> str:
    """The text near duplicates are judged on: user, assistant (reasoning, content, calls) and tool messages."""
    parts: list[str] = []
    for message in record.get("messages") or []:
        if message.get("role") == "system":
            continue
        parts.append(str(message.get("reasoning_content") or ""))
        parts.append(str(message.get("content") or ""))
        for call in message.get("tool_calls") or []:
            parts.append(f"{call['function']['name']} {call['function']['arguments']}")
    return "\n".join(p for p in parts if p)


def shingles(text: str, words: int = SHINGLE_WORDS) -> set[int]:
    """64-bit hashes of the text's word n-grams (lower-cased); a text shorter than n words is one shingle."""
    tokens = _WORD.findall(text.lower())
    if len(tokens) < words:
        grams = [" ".join(tokens)] if tokens else []
    else:
        grams = [" ".join(tokens[i : i + words]) for i in range(len(tokens) - words + 1)]
    return {struct.unpack("<Q", hashlib.blake2b(g.encode("utf-8"), digest_size=8).digest())[0] for g in grams}


def signature(hashes: set[int], bins: int = BINS) -> tuple[int, ...]:
    """One-permutation MinHash: per bin (hash mod bins) the smallest hash; -1 for an empty bin."""
    minimum = [-1] * bins
    for value in hashes:
        slot = value % bins
        if minimum[slot] < 0 or value < minimum[slot]:
            minimum[slot] = value
    return tuple(minimum)


def similarity(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Estimated Jaccard similarity: the share of equal bins among those not empty in both."""
    both = [(x, y) for x, y in zip(a, b, strict=True) if x >= 0 or y >= 0]
    if not both:
        return 1.0
    return sum(1 for x, y in both if x == y) / len(both)


class NearDuplicates:
    """Remembers kept samples; `is_duplicate` tells whether a new one is near one of them."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._signatures: list[tuple[int, ...]] = []
        self._bands: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)

    def _band_keys(self, sig: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
        return [(b, sig[b * ROWS_PER_BAND : (b + 1) * ROWS_PER_BAND]) for b in range(len(sig) // ROWS_PER_BAND)]

    def is_duplicate(self, text: str) -> bool:
        """True when `text` is near a kept one; otherwise it is kept (remembered) and False is returned."""
        sig = signature(shingles(text))
        keys = self._band_keys(sig)
        # A band of empty bins says nothing (short texts have many); bands with some empty bins
        # still do, since an empty bin is empty in a near-identical text too.
        keys = [key for key in keys if any(v >= 0 for v in key[1])]
        candidates = {i for key in keys for i in self._bands.get(key, ())}
        if any(similarity(sig, self._signatures[i]) >= self.threshold for i in sorted(candidates)):
            return True
        index = len(self._signatures)
        self._signatures.append(sig)
        for key in keys:
            self._bands[key].append(index)
        return False
