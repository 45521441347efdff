"""The house rules that keep the code's shape: layers point down only, no private names across
packages, each package says what it owns, and no module grows past one concern's size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each package may import of the project's own packages (the rest are the ones above it).
# core is the ground floor; migrations builds on core; worker on core; web also enqueues through
# worker; cli starts all of them; bench measures anything.
ALLOWED = {
    "core": {"core"},
    "migrations": {"core", "migrations"},
    "worker": {"core", "worker"},
    "web": {"core", "worker", "web"},
    "cli": {"core", "migrations", "worker", "web", "cli"},
    "bench": {"core", "migrations", "worker", "web", "cli", "bench"},
}
PROJECT = set(ALLOWED) | {"tests"}
# Frameworks that belong to one edge only.
FRAMEWORKS = {"flask": {"web"}, "werkzeug": {"web"}, "celery": {"worker"}, "kombu": {"worker"}}
MOST_LINES = 420


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in ``path``, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own package
                parts = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                module = ".".join([*parts, node.module] if node.module else parts)
            else:
                module = node.module or ""
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_only(package: str) -> None:
    wrong = []
    for path in _modules(package):
        for line, module, _ in _imports(path):
            top = module.split(".")[0]
            if top in PROJECT and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            if top in FRAMEWORKS and package not in FRAMEWORKS[top] | {"cli", "bench"}:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert wrong == []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_private_names_from_other_packages(package: str) -> None:
    wrong = []
    for path in _modules(package):
        for line, module, names in _imports(path):
            top = module.split(".")[0]
            if top in PROJECT and top != package:
                private = [n for n in names if n.startswith("_")]
                private += [p for p in module.split(".") if p.startswith("_") and p != "__main__"]
                if private:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} takes {private} of {module}")
    assert wrong == []


def test_the_walk_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself: an import of an entry point from core is found, in a function too."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from worker.app import create_celery\n")
    assert [(line, name) for line, name, _ in _imports(module)] == [(2, "worker.app")]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_says_what_it_owns(package: str) -> None:
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert docstring, f"{package}/__init__.py has no docstring"
    assert "import" in docstring, f"{package}: say what it may import"


@pytest.mark.parametrize("package", ["core", "web", "worker", "cli"])
def test_modules_hold_one_concern(package: str) -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _modules(package)
        if (lines := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert long == {}
