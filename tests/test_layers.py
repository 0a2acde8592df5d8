"""Layers point one way: handlers -> plan -> api; api and plan stay pure.

An AST check on every module: `glmops.contract` (what the trainer shares) imports only the
standard library and pydantic; `glmops.api` imports neither kopf nor a Kubernetes client nor
anything of glmops outside itself and the contract; `glmops.plan` imports no client, no kopf and
no handlers; no part of the operator imports the trainer (it would pull torch into the operator
image).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "operator" / "glmops"

RULES: dict[str, tuple[str, ...]] = {
    # layer: imports it must not make (prefix match)
    "contract": ("kopf", "kubernetes", "urllib3", "glmops.api", "glmops.plan", "glmops.handlers", "glmops.kube",
                 "glmops.conditions", "glmops.settings", "glmops_trainer", "torch", "transformers"),
    "api": ("kopf", "kubernetes", "glmops.plan", "glmops.handlers", "glmops.kube", "glmops_trainer", "torch"),
    "plan": ("kopf", "kubernetes", "urllib3", "glmops.handlers", "glmops.kube", "glmops_trainer", "torch", "requests",
             "subprocess", "socket", "http"),
    "crdgen": ("kopf", "kubernetes", "glmops.handlers", "glmops.kube", "glmops_trainer", "torch"),
    "": ("glmops_trainer", "torch", "transformers", "peft"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_layers_point_one_way() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = path.relative_to(PACKAGE).parts[0] if len(path.relative_to(PACKAGE).parts) > 1 else ""
        for rule_layer, forbidden in RULES.items():
            if rule_layer and rule_layer != layer:
                continue
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert violations == []


def test_operator_is_not_importable_as_a_package() -> None:
    import operator

    assert not hasattr(operator, "__path__"), "the folder operator/ must never shadow the stdlib module"
    assert not (PACKAGE.parent / "__init__.py").exists()


def test_the_contract_needs_nothing_but_pydantic() -> None:
    """The trainer imports glmops.contract: it must not drag the operator's dependencies along."""
    allowed_third_party = {"pydantic"}
    for path in sorted((PACKAGE / "contract").rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in ("glmops", "__future__") or top in allowed_third_party:
                assert top != "glmops" or name.startswith("glmops.contract"), f"{path.name} imports {name}"
                continue
            import sys

            assert top in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_the_export_does_not_import_the_training_recipe() -> None:
    """The export runs in its own CPU pod: it needs the trainer's locations, not its training stack."""
    export = PACKAGE.parents[1] / "trainer_image" / "glmops_trainer" / "export"
    offenders = [
        f"{path.name} imports {name}"
        for path in sorted(export.rglob("*.py"))
        for name in _imports(path)
        if name == "glmops_trainer.train" or name.startswith("glmops_trainer.train.")
    ]
    assert offenders == []
