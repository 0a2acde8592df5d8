"""Storage URIs, defined once: every CRD pattern and every parser (operator and trainer) comes from here.

What a URI may name depends on its role:

    role      what it names          forms
    model     a folder or a file     hf://[models/]ORG/NAME[@REVISION][/PATH]  s3://BUCKET[/KEY]
                                     pvc://CLAIM[/PATH]  file:///PATH
    dataset   one file, read         hf://datasets/ORG/NAME[@REVISION]/PATH  s3://BUCKET/KEY
                                     pvc://CLAIM/PATH  file:///PATH  (each naming a file, no trailing '/')
    output    a folder, written      s3://BUCKET[/PREFIX]  pvc://CLAIM[/PATH]  file:///PATH

hf:// follows the Hugging Face Hub's own form (`huggingface_hub.parse_hf_uri`, which HfFileSystem
reads): the repository type first (`datasets/`; models need none), the revision right after the
name, then the path inside the repository. A revision is a branch, tag or commit; one with a '/'
is written percent-encoded (`feature%2Fx`), except the Hub's special refs `refs/pr/N` and
`refs/convert/NAME`, written as they are. Every hf:// URI accepted here means to the Hub exactly
what it means here (the contract test parses both ways).

Each (role, scheme) is one regular expression with named groups. The CRD gets the same expressions
without the group names: RE2 (the apiserver's dialect) and Python's `re` read them alike, because
they use no look-around, no back-references and only explicit character classes. So what
`kubectl apply` accepts is exactly what `parse_uri` accepts; property tests check it per role.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Scheme = Literal["file", "pvc", "hf", "s3"]
RepoType = Literal["model", "dataset"]


class UriRole(StrEnum):
    """What a URI field names, which decides the forms it accepts."""

    model = "model"
    """A model: a checkpoint folder, or one file (a GGUF) in a Hub repository or on a claim."""
    dataset = "dataset"
    """One file that is read (a dataset, a prompt file)."""
    output = "output"
    """A folder that is written (checkpoints and artifacts)."""


ROLE_SCHEMES: dict[UriRole, tuple[Scheme, ...]] = {
    UriRole.model: ("hf", "s3", "pvc", "file"),
    UriRole.dataset: ("hf", "s3", "pvc", "file"),
    UriRole.output: ("s3", "pvc", "file"),
}
"""The schemes each role accepts. The Hub is read-only here: nothing is written to hf://."""

MAX_URI_LENGTH = 1024

# ---- building blocks ---------------------------------------------------------------------------
# Control characters and the space end a URI's parts; named as a range so RE2 and Python agree
# (their `\s` differ on non-ASCII spaces).
_CTL = r"\x00-\x20\x7f"
_C = rf"[^/{_CTL}]"
# A path segment other than "..": empty (a doubled or trailing slash), "." or a name.
_SEGMENT = rf"(?:[^/{_CTL}.]{_C}*|\.|\.[^/{_CTL}.]{_C}*|\.\.{_C}+)?"
_PATH = rf"(?:/{_SEGMENT})*"
# A file name: a segment that is not empty, "." or "..".
_FILE_NAME = rf"(?:[^/{_CTL}.]{_C}*|\.[^/{_CTL}.]{_C}*|\.\.{_C}+)"
_DNS_SUBDOMAIN = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_WORD = _ALNUM | {"_"}


def _char_class(chars: Iterable[str]) -> str:
    """`chars` (letters, digits and punctuation) as one bracket expression, e.g. [0-9A-Z_a-fh-z]."""
    chosen = set(chars)
    parts: list[str] = []
    for low, high in (("0", "9"), ("A", "Z"), ("a", "z")):
        run: list[str] = []
        for code in range(ord(low), ord(high) + 2):
            c = chr(code)
            if code <= ord(high) and c in chosen:
                run.append(c)
                continue
            if run:
                parts.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}" if len(run) > 2 else "".join(run))
            run = []
    # '-' last, where it cannot be read as a range; no other punctuation used here needs escaping.
    punctuation = sorted(c for c in chosen if not c.isalnum())
    parts += [c for c in punctuation if c != "-"] + (["-"] if "-" in punctuation else [])
    return "[" + "".join(parts) + "]"


def _word_except(words: Iterable[str], first: frozenset[str], rest: frozenset[str]) -> str:
    """Strings of one `first` then any number of `rest` characters, except the given words.

    RE2 has no look-ahead, so "a name other than these" is written out along the words' letters:
    after each prefix of a word, the string may end (when that prefix is no word), go on with a
    character no word continues with, or follow a word's next letter.
    """
    vocabulary = tuple(words)
    tail = _char_class(rest) + "*"

    def after(prefix: str) -> str:
        allowed = rest if prefix else first
        nexts = sorted({w[len(prefix)] for w in vocabulary if w.startswith(prefix) and len(w) > len(prefix)} & allowed)
        others = allowed - set(nexts)
        branches = [_char_class(others) + tail] if others else []
        branches += [c + after(prefix + c) for c in nexts]
        body = "(?:" + "|".join(branches) + ")"
        return body + ("?" if prefix and prefix not in vocabulary else "")

    return after("")


# Hub names (validate_repo_id): letters, digits, '_', '-', '.'; no '--' or '..', alphanumeric
# first and not ending in '-' or '.'. A stricter form keeps it simple: one '-' or '.' at a time.
_SEP_NAME = r"[A-Za-z0-9][A-Za-z0-9_]*[-.][A-Za-z0-9_](?:[-.]?[A-Za-z0-9_])*"
# The first segment of hf://A/B/... is a repository type when it is one of these (the Hub reads
# `hf://datasets/a/b` as the dataset a/b, and refuses the singular `dataset/`), so no ORG is.
HUB_TYPE_WORDS = ("models", "datasets", "spaces", "kernels", "buckets", "model", "dataset", "space", "kernel", "bucket")
_ORG = rf"(?:{_SEP_NAME}|{_word_except(HUB_TYPE_WORDS, _ALNUM, _WORD)})"
# A repository name may not end in ".git" (the Hub refuses it): its last '.'-separated part is not "git".
_DOT_PART = rf"(?:[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)+|{_word_except(('git',), _WORD, _WORD)})"
_NAME = rf"(?:[A-Za-z0-9](?:-?[A-Za-z0-9_])*|[A-Za-z0-9](?:[-.]?[A-Za-z0-9_])*\.{_DOT_PART})"
# A revision: the Hub's special refs as they are, else one segment with '/' and other characters
# percent-encoded (decoded as the Hub decodes them: `unquote`). A plain "refs" followed by a path
# would be read by the Hub as the start of a special ref, so "refs" alone is no revision.
_REVISION_CHARS = _ALNUM | set("._~+%-")
_REVISION = rf"(?:refs/pr/[0-9]+|refs/convert/[A-Za-z0-9_.-]+|{_word_except(('refs',), _REVISION_CHARS, _REVISION_CHARS)})"
# A segment of a path in a Hub repository: not empty, ".", ".." and without '@' (an '@' after
# the name is read as the revision; `hf://ORG/NAME/PATH@REV` is an old form that meant otherwise).
_HF_SEGMENT = rf"(?:[^/@{_CTL}.][^/@{_CTL}]*|\.[^/@{_CTL}.][^/@{_CTL}]*|\.\.[^/@{_CTL}]+)"
_HF_REPO = rf"(?P<authority>{_ORG}/{_NAME})(?:@(?P<revision>{_REVISION}))?"

_LOCAL: dict[Scheme, str] = {
    "file": rf"file://(?P<path>/{_SEGMENT}{_PATH})",
    "pvc": rf"pvc://(?P<authority>{_DNS_SUBDOMAIN})(?P<path>{_PATH})",
}
_FOLDER: dict[Scheme, str] = {**_LOCAL, "s3": rf"s3://(?P<authority>{_BUCKET})(?P<path>{_PATH})"}

GRAMMAR: dict[UriRole, dict[Scheme, str]] = {
    UriRole.model: {
        **_FOLDER,
        "hf": rf"hf://(?:models/)?{_HF_REPO}(?P<path>(?:/{_HF_SEGMENT})*)/?",
    },
    UriRole.dataset: {
        "file": rf"file://(?P<path>{_PATH}/{_FILE_NAME})",
        "pvc": rf"pvc://(?P<authority>{_DNS_SUBDOMAIN})(?P<path>{_PATH}/{_FILE_NAME})",
        "s3": rf"s3://(?P<authority>{_BUCKET})(?P<path>{_PATH}/{_FILE_NAME})",
        "hf": rf"hf://(?P<datasets>datasets)/{_HF_REPO}(?P<path>(?:/{_HF_SEGMENT})+)",
    },
    UriRole.output: dict(_FOLDER),
}
"""One expression per role and scheme; `pattern` joins and anchors a role's for its CRD fields."""

FORMS: dict[UriRole, dict[Scheme, str]] = {
    UriRole.model: {
        "hf": "hf://ORG/NAME[@REVISION][/PATH]",
        "s3": "s3://BUCKET/KEY",
        "pvc": "pvc://CLAIM/PATH",
        "file": "file:///PATH",
    },
    UriRole.dataset: {
        "hf": "hf://datasets/ORG/NAME[@REVISION]/PATH",
        "s3": "s3://BUCKET/KEY",
        "pvc": "pvc://CLAIM/PATH",
        "file": "file:///PATH",
    },
    UriRole.output: {"s3": "s3://BUCKET/PREFIX", "pvc": "pvc://CLAIM/PATH", "file": "file:///PATH"},
}
"""How each form is written, for messages and docs."""

_GROUP_NAME = re.compile(r"\(\?P<\w+>")


def _schemes(role: UriRole, schemes: Iterable[Scheme] | None) -> tuple[Scheme, ...]:
    if schemes is None:
        return ROLE_SCHEMES[role]
    chosen = tuple(schemes)
    if not chosen or not set(chosen) <= set(ROLE_SCHEMES[role]):
        raise ValueError(f"schemes {chosen} are not a subset of the {role} role's {ROLE_SCHEMES[role]}")
    return tuple(s for s in ROLE_SCHEMES[role] if s in chosen)


def pattern(role: UriRole, schemes: Iterable[Scheme] | None = None) -> str:
    """The anchored expression, without group names, that accepts the URIs of `role`: the CRD pattern.

    `schemes` narrows the role to some of its schemes (a SyntheticDataset's files live on claims).
    """
    body = "|".join(_GROUP_NAME.sub("(?:", GRAMMAR[role][s]) for s in _schemes(role, schemes))
    return f"^(?:{body})$"


# ---- synthetic://NAME: a SyntheticDataset's output, as a FineTuneJob's dataset source -----------
# Not a storage scheme: the operator resolves it to the dataset's output file before the trainer
# sees the config, so only the FineTuneJob's `dataset.source` field accepts it.
_SYNTHETIC = re.compile(rf"synthetic://(?P<authority>{_DNS_SUBDOMAIN})")
SYNTHETIC_FORM = "synthetic://NAME"


def finetune_dataset_pattern() -> str:
    """The CRD pattern of a FineTuneJob's `dataset.source`: a dataset file, or synthetic://NAME."""
    body = "|".join(_GROUP_NAME.sub("(?:", GRAMMAR[UriRole.dataset][s]) for s in ROLE_SCHEMES[UriRole.dataset])
    return f"^(?:{body}|{_GROUP_NAME.sub('(?:', _SYNTHETIC.pattern)})$"


def synthetic_name(uri: str) -> str | None:
    """The SyntheticDataset a synthetic://NAME dataset source names; None for any other URI."""
    match = _SYNTHETIC.fullmatch(uri)
    return match.group("authority") if match else None


# ---- parsed URIs -------------------------------------------------------------------------------


class UriError(ValueError):
    """A URI outside the grammar; the message names the field and shows the accepted forms."""


@dataclass(frozen=True)
class StorageUri:
    """A parsed URI.

    `authority` is the claim, bucket or Hub repository id (ORG/NAME); `path` starts with '/' or is
    empty (for file:// the absolute path). `revision` (hf:// only) is decoded: `refs/pr/3`,
    `feature/x`. `repo_type` is the Hub repository's type for hf://, else None.
    """

    scheme: Scheme
    authority: str
    path: str
    revision: str | None = None
    repo_type: RepoType | None = None

    @property
    def claim(self) -> str | None:
        """The PVC name of a pvc:// URI."""
        return self.authority if self.scheme == "pvc" else None

    @property
    def bucket(self) -> str | None:
        """The bucket of an s3:// URI."""
        return self.authority if self.scheme == "s3" else None

    @property
    def key(self) -> str:
        """The path without leading or trailing slashes: an s3:// key or prefix, a path in a claim or repository."""
        return self.path.strip("/")

    @property
    def repo_id(self) -> str | None:
        """ORG/NAME of an hf:// URI."""
        return self.authority if self.scheme == "hf" else None

    @property
    def location(self) -> str:
        """AUTHORITY/PATH without leading or trailing slashes (the absolute path for file://)."""
        if self.scheme == "file":
            return self.path
        return f"{self.authority}/{self.key}".rstrip("/")


_COMPILED = {role: {s: re.compile(expr) for s, expr in by_scheme.items()} for role, by_scheme in GRAMMAR.items()}


def parse_uri(uri: str, field: str = "uri", role: UriRole = UriRole.model, schemes: Iterable[Scheme] | None = None) -> StorageUri:
    """Parse `uri` as a `role` location, or raise UriError naming `field`, what is wrong and the forms allowed.

    `schemes` narrows the role to some of its schemes, as `pattern` does.
    """
    schemes = _schemes(role, schemes)
    forms = ", ".join(FORMS[role][s] for s in schemes)
    scheme, sep, _ = uri.partition("://")
    if not sep:
        raise UriError(f"{field}: {uri!r} has no scheme; write one of {forms}")
    if scheme not in schemes:
        why = (
            "the Hugging Face Hub is only read from"
            if scheme == "hf" and "hf" not in ROLE_SCHEMES[role]
            else f"scheme {scheme!r} is not supported here"
        )
        raise UriError(f"{field}: {why}; use one of {forms}")
    known: Scheme = scheme  # narrowed by the membership test above
    if len(uri) > MAX_URI_LENGTH:
        raise UriError(f"{field}: longer than {MAX_URI_LENGTH} characters")
    match = _COMPILED[role][known].fullmatch(uri)
    if match is None:
        raise UriError(f"{field}: {uri!r} is not a valid {scheme}:// {_NOUN[role]}; {_hint(role, known, uri)}")
    groups = match.groupdict()
    revision = groups.get("revision")
    return StorageUri(
        scheme=known,
        authority=groups.get("authority") or "",
        path=groups.get("path") or "",
        revision=urllib.parse.unquote(revision) if revision else None,
        repo_type=None if known != "hf" else ("dataset" if groups.get("datasets") else "model"),
    )


def format_hf_uri(repo_id: str, path_in_repo: str = "", revision: str | None = None, repo_type: RepoType = "model") -> str:
    """The hf:// URI of a Hub location, written as the Hub writes it (and as `parse_uri` reads it back)."""
    prefix = "datasets/" if repo_type == "dataset" else ""
    at = ""
    if revision is not None:
        if re.fullmatch(r"refs/pr/[0-9]+|refs/convert/[A-Za-z0-9_.-]+", revision):
            at = "@" + revision
        else:
            # quote() leaves only letters, digits and "_.-~" as they are.
            encoded = urllib.parse.quote(revision, safe="")
            # A plain "refs" would be read as the start of a special ref: encode its first letter.
            at = "@" + ("%72efs" if encoded == "refs" else encoded)
    path = "/" + path_in_repo.strip("/") if path_in_repo.strip("/") else ""
    return f"hf://{prefix}{repo_id}{at}{path}"


_NOUN = {UriRole.model: "model location", UriRole.dataset: "dataset file", UriRole.output: "output folder"}


def _hint(role: UriRole, scheme: Scheme, uri: str) -> str:
    rest = uri.partition("://")[2]
    segments = rest.split("/")
    if ".." in segments:
        return "'..' is not allowed; write the path inside the location"
    if role is UriRole.dataset and scheme != "hf" and (rest.endswith("/") or (scheme != "file" and len(segments) < 2)):
        return f"it names a folder, not a file; write {FORMS[role][scheme]} ending in the file's name"
    if scheme == "file":
        return "it must be absolute: file:///PATH (three slashes)"
    if scheme == "pvc":
        if not segments[0]:
            return "it names no claim; write pvc://CLAIM/PATH"
        return "write pvc://CLAIM/PATH; CLAIM is the PersistentVolumeClaim's name (lower case, digits, '-', '.')"
    if scheme == "s3":
        return "write s3://BUCKET/KEY with a valid bucket name (3-63 lower-case letters, digits, '.', '-')"
    return _hf_hint(role, rest, segments)


def _hf_hint(role: UriRole, rest: str, segments: list[str]) -> str:
    form = FORMS[role]["hf"]
    first = segments[0]
    if role is UriRole.model and first in HUB_TYPE_WORDS and first != "models":
        return f"{first}/ names a repository type other than a model; a model is {form}"
    if role is UriRole.dataset:
        if first != "datasets":
            return f"a dataset file is {form} (the Hub's form: the repository type first)"
        segments = segments[1:]
    elif first == "models":
        segments = segments[1:]
    if len(segments) < 2 or not segments[0] or not segments[1].split("@")[0]:
        return f"it names no repository; write {form}"
    name, at, revision = segments[1].partition("@")
    if "@" in "/".join(segments[2:]):
        return f"the revision goes right after the name, before the path: {form}"
    if at and not revision:
        return "it has an empty revision after '@'; name a branch, tag or commit"
    if not re.fullmatch(f"{_ORG}/{_NAME}", f"{segments[0]}/{name}"):
        return (
            f"{segments[0]}/{name} is not a Hub repository id (ORG/NAME of letters, digits, '_', '-' and '.', "
            "no '--' or '..', not ending in '.git')"
        )
    if at and revision == "refs":
        return (
            "a revision that starts with refs/ is a special ref written as it is (refs/pr/3, refs/convert/parquet), "
            "or written with '/' as %2F (refs%2Fheads%2Fmain)"
        )
    if at:
        return (
            f"revision {revision!r}: a branch, tag or commit of letters, digits and '._~+-'; write '/' in a branch "
            "name as %2F (feature%2Fx), or a special ref as it is (refs/pr/3)"
        )
    if role is UriRole.dataset and len(segments) < 3:
        return f"it names a repository, not a file in it; write {form}"
    return f"write {form}"


# ---- local paths -------------------------------------------------------------------------------

_COMPILED_LOCAL = {s: re.compile(expr) for s, expr in _LOCAL.items()}


def pod_path(location: StorageUri | str, pvc_mount_root: str) -> str | None:
    """Where a file:// or pvc:// location is inside a pod; None for remote schemes (hf://, s3://).

    file:// and pvc:// have one form in every role (the dataset role only asks for a file), so a
    string is read with it; a malformed one raises UriError.
    """
    if isinstance(location, str):
        scheme = location.partition("://")[0]
        if scheme in ("hf", "s3"):
            return None
        if scheme == "file":
            local: Scheme = "file"
        elif scheme == "pvc":
            local = "pvc"
        else:
            raise UriError(f"{location!r} is not a file:// or pvc:// location")
        match = _COMPILED_LOCAL[local].fullmatch(location)
        if match is None:
            raise UriError(f"{location!r} is not a valid {scheme}:// location; {_hint(UriRole.output, local, location)}")
        location = StorageUri(local, match.groupdict().get("authority") or "", match["path"])
    if location.scheme == "file":
        return location.path
    if location.scheme == "pvc":
        base = f"{pvc_mount_root.rstrip('/')}/{location.authority}"
        return f"{base}/{location.key}" if location.key else base
    return None


def join_uri(base: str, relative: str) -> str:
    """`base` joined with a relative path by one '/'."""
    return base.rstrip("/") + "/" + relative.lstrip("/")
