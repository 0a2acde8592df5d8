"""Data problems, as the user sees them: `FILE:LINE: FIELD: what is wrong (how to fix it)`.

`ValidationReport` collects the problems of one dataset file and decides, against
`dataset.maxErrorFraction`, whether training may go on with the invalid samples dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from glmops_trainer.data.conversation import SourceRef


class IssueKind(StrEnum):
    """What kind of problem a sample has; used for the per-kind summary."""

    bad_json = "bad-json"
    not_an_object = "not-an-object"
    wrong_format = "wrong-format"
    unknown_key = "unknown-key"
    wrong_type = "wrong-type"
    unknown_role = "unknown-role"
    missing_content = "missing-content"
    empty_assistant_turn = "empty-assistant-turn"
    control_token = "control-token-in-text"
    system_not_first = "system-not-first"
    no_user_before_assistant = "no-user-before-assistant"
    consecutive_assistant_turns = "consecutive-assistant-turns"
    tool_result_without_call = "tool-result-without-call"
    tool_call_without_result = "tool-call-without-result"
    tool_name_mismatch = "tool-name-mismatch"
    invalid_tool_arguments = "invalid-tool-arguments"
    tool_call_without_name = "tool-call-without-name"
    duplicate_tool_call_id = "duplicate-tool-call-id"
    invalid_tools = "invalid-tools"
    no_final_assistant_turn = "no-final-assistant-turn"
    too_long = "too-long"
    render_failed = "render-failed"


@dataclass(frozen=True)
class Issue:
    """One problem of one sample."""

    source: SourceRef
    kind: IssueKind
    message: str
    fix: str
    field: str = ""

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.source}: {where}{self.message} ({self.fix})"


class DataValidationError(ValueError):
    """The dataset cannot be trained on; the message lists the problems and how to fix them."""


@dataclass
class ValidationReport:
    """Problems found in a dataset plus the counts of valid and invalid samples."""

    path: str
    issues: list[Issue] = field(default_factory=list)
    valid: int = 0
    invalid: int = 0

    @property
    def total(self) -> int:
        """Samples seen (valid + invalid)."""
        return self.valid + self.invalid

    @property
    def error_fraction(self) -> float:
        """Share of samples that are invalid (0.0 for an empty file)."""
        return self.invalid / self.total if self.total else 0.0

    def summary(self) -> dict[str, int]:
        """Number of issues per kind, most frequent first."""
        return dict(Counter(issue.kind.value for issue in self.issues).most_common())

    def record(self, issues: list[Issue]) -> bool:
        """Count one sample as valid (no issues) or invalid, keep its issues, and return whether it is valid."""
        if issues:
            self.invalid += 1
            self.issues.extend(issues)
            return False
        self.valid += 1
        return True

    def reclassify_invalid(self, issues: list[Issue]) -> None:
        """Move one sample that was counted valid to invalid (found by a later pass, e.g. the length check)."""
        self.valid -= 1
        self.invalid += 1
        self.issues.extend(issues)

    def format(self, limit: int = 20) -> str:
        """The first `limit` problems, one per line, then the counts and the per-kind summary."""
        lines = [str(issue) for issue in self.issues[:limit]]
        if len(self.issues) > limit:
            hidden = len(self.issues) - limit
            lines.append(f"... and {hidden} more problem{'s' if hidden > 1 else ''}")
        kinds = ", ".join(f"{kind}: {count}" for kind, count in self.summary().items()) or "none"
        lines.append(
            f"{self.path}: {self.invalid} of {self.total} samples invalid "
            f"({self.error_fraction:.1%}); problems by kind: {kinds}"
        )
        return "\n".join(lines)

    def raise_if_over(self, max_error_fraction: float, limit: int = 20) -> None:
        """Raise DataValidationError when no sample is valid or the invalid share exceeds `max_error_fraction`."""
        if self.valid == 0:
            reason = "no valid sample" if self.total else "the file holds no sample"
            raise DataValidationError(f"{self.path}: {reason}; nothing to train on.\n{self.format(limit)}")
        if self.error_fraction > max_error_fraction:
            raise DataValidationError(
                f"{self.path}: {self.error_fraction:.1%} of samples are invalid, more than "
                f"dataset.maxErrorFraction={max_error_fraction:.1%}. Fix the problems below, or raise "
                f"maxErrorFraction to train on the valid samples only.\n{self.format(limit)}"
            )
