"""checkov over the rendered chart and every kind of object the operator creates: no failed check
outside the reviewed skip list (checkov-skips.yaml, a reason per entry), and no stale entry there.

checkov runs from its own environment (`scripts/build-checkov.sh`, `make checkov`): it pins
libraries that the project's dev extra pins differently.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from planner_outputs import planner_outputs

from glmops_dev.chart import render
from glmops_trainer.llamacpp_src import cache_root

pytestmark = pytest.mark.slow
CHECKOV_VERSION = "3.3.30"
SKIPS = Path(__file__).with_name("checkov-skips.yaml")


def checkov() -> Path:
    binary = cache_root() / f"checkov-{CHECKOV_VERSION}" / "bin" / "checkov"
    if not binary.is_file():
        if os.environ.get("GLMOPS_NO_BUILD") == "1":
            pytest.fail(f"checkov is not installed at {binary}: run `make checkov` (scripts/build-checkov.sh)", pytrace=False)
        subprocess.run(["bash", str(Path(__file__).resolve().parents[2] / "scripts" / "build-checkov.sh")], check=True)
    return binary


def scanned_files(folder: Path) -> list[str]:
    files = []
    for name, obj in planner_outputs().items():
        files.append(f"planner-{name}.yaml")
        (folder / files[-1]).write_text(yaml.safe_dump(obj))
    for values_name, values in (("default", {}), ("namespaced", {"watchNamespaces": ["team-a"], "metrics": {"serviceMonitor": {"enabled": True}}})):
        for obj in render(values):
            file = f"chart-{obj['kind'].lower()}-{obj['metadata']['name']}-{obj['metadata'].get('namespace', 'cluster')}-{values_name}.yaml"
            (folder / file).write_text(yaml.safe_dump(obj))
            files.append(file)
    return files


def failed_checks(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(checkov()), "--directory", str(folder), "--framework", "kubernetes", "--output", "json", "--quiet", "--compact",
         "--skip-download"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports)
    assert sum(r["summary"]["resource_count"] for r in reports) > 20
    return [f for r in reports for f in r["results"]["failed_checks"]]


def test_checkov_finds_nothing_outside_the_reviewed_skips(tmp_path: Path) -> None:
    skips = yaml.safe_load(SKIPS.read_text())
    assert all(entry.get("reason", "").strip() and entry.get("objects") for entry in skips), "every skip needs objects and a reason"
    files = scanned_files(tmp_path)
    used: set[int] = set()
    unexplained = []
    for finding in failed_checks(tmp_path):
        file = Path(finding["file_path"]).name
        assert file in files
        matches = [i for i, e in enumerate(skips) if e["check"] == finding["check_id"] and any(fnmatch.fnmatch(file, g) for g in e["objects"])]
        if matches:
            used.update(matches)
        else:
            unexplained.append(f"{finding['check_id']} ({finding['check_name']}) in {file} at {finding.get('resource')}")
    assert unexplained == []
    stale = [skips[i]["check"] for i in range(len(skips)) if i not in used]
    assert stale == [], f"skip entries that match nothing any more (remove them): {stale}"
