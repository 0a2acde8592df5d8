"""The storage URI grammar, defined once: the CRD's patterns and both sides' parsers come from it.

    file:///PATH                   an absolute path inside the pod
    pvc://CLAIM[/PATH]             a path inside a PersistentVolumeClaim (mounted by the operator)
    hf://ORG/NAME[/PATH][@REVISION]  a Hugging Face repository, or a file in one (models and datasets)
    s3://BUCKET[/KEY]              an S3 (or S3-compatible) bucket and key prefix
    synthetic://NAME               the output of a SyntheticDataset in the same namespace (datasets only;
                                   the operator resolves it to the dataset's output file)

Each scheme is one regular expression with named groups. The CRD gets the same expressions
without the group names (RE2, the apiserver's dialect, and Python's `re` read them alike), so
what `kubectl apply` accepts is exactly what `parse_uri` accepts; a property test checks that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Scheme = Literal["file", "pvc", "hf", "s3", "synthetic"]

# A path segment other than "..": empty (a doubled or trailing slash), "." or a name.
_SEGMENT = r"(?:[^/\s.][^/\s]*|\.|\.[^/\s.][^/\s]*|\.\.[^/\s]+)?"
_PATH = rf"(?:/{_SEGMENT})*"
_DNS_SUBDOMAIN = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
_HF_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"

GRAMMAR: dict[str, str] = {
    "file": rf"file://(?P<path>/(?:{_SEGMENT}){_PATH})",
    "pvc": rf"pvc://(?P<authority>{_DNS_SUBDOMAIN})(?P<path>{_PATH})",
    "hf": rf"hf://(?P<authority>{_HF_NAME}/{_HF_NAME})(?P<path>{_PATH})(?:@(?P<revision>[A-Za-z0-9._/-]+))?",
    "s3": rf"s3://(?P<authority>[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9])(?P<path>{_PATH})",
    "synthetic": rf"synthetic://(?P<authority>{_DNS_SUBDOMAIN})",
}
"""One expression per scheme, anchored by `pattern_for`."""

# A dataset is one file: an s3:// key that is not a prefix, or a file of a Hub dataset repository in
# the Hub's own form, hf://datasets/ORG/NAME[@REVISION]/PATH. These narrow the grammar above (every
# URI they accept, `parse_uri` accepts too), so what cannot be read is refused at apply time.
_FILE_NAME = r"(?:[^/\s.][^/\s]*|\.[^/\s.][^/\s]*|\.\.[^/\s]+)"
DATASET_FILE_GRAMMAR: dict[str, str] = {
    "s3": rf"s3://(?:[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9]){_PATH}/{_FILE_NAME}",
    "hf": rf"hf://datasets/{_HF_NAME}/{_HF_NAME}(?:@[^\s/@]+)?{_PATH}/{_FILE_NAME}",
}
"""Dataset sources: the s3:// and hf:// forms that name one file."""

MAX_URI_LENGTH = 1024

MODEL_SCHEMES: tuple[Scheme, ...] = ("hf", "s3", "pvc", "file")
DATA_SCHEMES: tuple[Scheme, ...] = ("hf", "s3", "pvc", "file")
OUTPUT_SCHEMES: tuple[Scheme, ...] = ("s3", "pvc", "file")

_EXAMPLES = {
    "file": "file:///PATH",
    "pvc": "pvc://CLAIM/PATH",
    "hf": "hf://ORG/NAME[@REVISION]",
    "s3": "s3://BUCKET/KEY",
    "synthetic": "synthetic://SYNTHETICDATASET",
}


def pattern_for(schemes: tuple[Scheme, ...]) -> str:
    """The anchored expression (without group names) that accepts URIs of `schemes`: the CRD pattern."""
    body = "|".join(re.sub(r"\(\?P<\w+>", "(?:", GRAMMAR[s]) for s in schemes)
    return f"^(?:{body})$"


def dataset_pattern() -> str:
    """The CRD pattern of a dataset source: pvc:// and file:// as everywhere, s3:// and hf:// naming one
    file, and synthetic://NAME (a SyntheticDataset's output)."""
    general = [re.sub(r"\(\?P<\w+>", "(?:", GRAMMAR[s]) for s in ("pvc", "file", "synthetic")]
    return f"^(?:{'|'.join([*general, DATASET_FILE_GRAMMAR['s3'], DATASET_FILE_GRAMMAR['hf']])})$"


class UriError(ValueError):
    """A URI outside the grammar; the message names the field and shows the accepted forms."""


@dataclass(frozen=True)
class StorageUri:
    """A parsed URI: `authority` is the claim, repository or bucket; `path` starts with '/' or is empty."""

    scheme: Scheme
    authority: str
    path: str
    revision: str | None = None

    @property
    def claim(self) -> str | None:
        """The PVC name of a pvc:// URI."""
        return self.authority if self.scheme == "pvc" else None

    @property
    def location(self) -> str:
        """AUTHORITY/PATH without leading or trailing slashes (the absolute path for file://)."""
        if self.scheme == "file":
            return self.path
        return f"{self.authority}/{self.path.strip('/')}".rstrip("/")


_COMPILED = {scheme: re.compile(expr) for scheme, expr in GRAMMAR.items()}


def parse_uri(uri: str, field: str = "uri", schemes: tuple[Scheme, ...] = MODEL_SCHEMES) -> StorageUri:
    """Parse `uri`, or raise UriError naming `field` and the forms `schemes` allow."""
    forms = ", ".join(_EXAMPLES[s] for s in schemes)
    scheme, sep, _ = uri.partition("://")
    if not sep:
        raise UriError(f"{field}: {uri!r} has no scheme; write one of {forms}")
    if scheme not in schemes:
        raise UriError(f"{field}: scheme {scheme!r} is not supported here; use one of {forms}")
    if len(uri) > MAX_URI_LENGTH:
        raise UriError(f"{field}: longer than {MAX_URI_LENGTH} characters")
    match = _COMPILED[scheme].fullmatch(uri)
    if match is None:
        raise UriError(f"{field}: {uri!r} is not a valid {scheme}:// URI; {_hint(scheme, uri)}")
    groups = match.groupdict()
    return StorageUri(
        scheme=scheme,  # checked against `schemes` above
        authority=groups.get("authority") or "",
        path=groups.get("path") or "",
        revision=groups.get("revision"),
    )


def _hint(scheme: str, uri: str) -> str:
    rest = uri.partition("://")[2]
    segments = rest.split("/")
    if ".." in segments:
        return "'..' is not allowed; write the path inside the location"
    if scheme == "file":
        return "it must be absolute: file:///PATH (three slashes)"
    if scheme == "pvc":
        if not segments[0]:
            return "it names no claim; write pvc://CLAIM/PATH"
        return "write pvc://CLAIM/PATH; CLAIM is the PersistentVolumeClaim's name (lower case, digits, '-', '.')"
    if scheme == "synthetic":
        return "write synthetic://NAME, NAME being a SyntheticDataset in the same namespace (no path)"
    if scheme == "hf":
        if rest.endswith("@"):
            return "it has an empty revision after '@'; name a branch, tag or commit"
        return "write hf://ORG/NAME or hf://ORG/NAME@REVISION"
    return "write s3://BUCKET/KEY with a valid bucket name (3-63 lower-case letters, digits, '.', '-')"


def synthetic_name(uri: str) -> str | None:
    """The SyntheticDataset a synthetic://NAME dataset source names; None for any other URI."""
    match = _COMPILED["synthetic"].fullmatch(uri)
    return match.group("authority") if match else None


def pod_path(uri: str, pvc_mount_root: str) -> str | None:
    """Where a file:// or pvc:// location is inside a pod; None for remote schemes."""
    parsed = parse_uri(uri, schemes=("file", "pvc", "hf", "s3"))
    if parsed.scheme == "file":
        return parsed.path
    if parsed.scheme == "pvc":
        base = f"{pvc_mount_root.rstrip('/')}/{parsed.authority}"
        inner = parsed.path.strip("/")
        return f"{base}/{inner}" if inner else base
    return None


def join_uri(base: str, relative: str) -> str:
    """`base` joined with a relative path by one '/'."""
    return base.rstrip("/") + "/" + relative.lstrip("/")
