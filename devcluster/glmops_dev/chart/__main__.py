"""python -m glmops_dev.chart values [--check]: write (or check) charts/glmops/values.yaml and values.schema.json."""

from __future__ import annotations

import argparse
import shutil
import sys

from glmops_dev.binaries import repo_root
from glmops_dev.chart import chart_dir
from glmops_dev.chart.values import schema_json, settings_template, values_yaml


def generated_files() -> dict[str, str]:
    """Path (relative to the repository) -> text of every file generated into the chart."""
    files = {
        "charts/glmops/values.yaml": values_yaml(),
        "charts/glmops/values.schema.json": schema_json(),
        "charts/glmops/templates/_settings.tpl": settings_template(),
    }
    for crd in sorted((repo_root() / "crds").glob("*.yaml")):
        files[f"charts/glmops/files/crds/{crd.name}"] = crd.read_text()
    return files


def stale_files() -> list[str]:
    """The generated files whose content on disk differs (or that are missing or left over)."""
    stale = [path for path, text in generated_files().items() if not (repo_root() / path).is_file() or (repo_root() / path).read_text() != text]
    wanted = set(generated_files())
    stale += [
        f"charts/glmops/files/crds/{p.name}" for p in sorted((chart_dir() / "files" / "crds").glob("*.yaml"))
        if f"charts/glmops/files/crds/{p.name}" not in wanted
    ]
    return stale


def main(argv: list[str] | None = None) -> int:
    """Write the chart's generated files, or with --check report the stale ones."""
    parser = argparse.ArgumentParser(prog="python -m glmops_dev.chart", description=__doc__)
    parser.add_argument("command", choices=["values"])
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("generated chart files differ: " + ", ".join(stale), file=sys.stderr)
            print("Run `python -m glmops_dev.chart values` (after `make crds`) and commit the result.", file=sys.stderr)
            return 1
        print("charts/glmops: generated files up to date")
        return 0
    crd_dir = chart_dir() / "files" / "crds"
    shutil.rmtree(crd_dir, ignore_errors=True)
    crd_dir.mkdir(parents=True)
    for path, text in generated_files().items():
        (repo_root() / path).write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
