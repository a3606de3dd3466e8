"""The floors of the code: every import of every library module, read from its source, points down.

Floors, from the ground up (a module may import its own package and the floors below):

1. ``utils``                         options, errors, io, logs, seeding, distributed, metrics, figures
2. ``attacks``, ``networks``, ``data`` the role packages (they do not import one another)
3. ``training``                      the loop, the training run, optimiser, losses
4. ``engine``                        the command line, evaluation jobs, run folders
5. ``studies``                       sweeps, tables, transfer, frequency bands, per-organ analysis, charts
6. the entry scripts and ``trainer.py`` at the root, ``scripts/``, ``benchmarks/``

Imports inside functions count as much as those at the top. No module imports a module that
imports it back (directly or through others).
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOORS = {"utils": 1, "attacks": 2, "networks": 2, "data": 2, "training": 3, "engine": 4, "studies": 5}
ENTRY_SCRIPTS = ("generate_adv_samples", "inference_on_saved_adv_samples", "run_normal_or_adv_training", "trainer")
TOP = 6


def _modules() -> dict[str, str]:
    """``{dotted name: path}`` of every library module (the floors' packages and the root modules)."""
    found = {name: os.path.join(ROOT, f"{name}.py") for name in ENTRY_SCRIPTS}
    for package in FLOORS:
        for file in sorted(os.listdir(os.path.join(ROOT, package))):
            if file.endswith(".py"):
                stem = file[:-3]
                found[package if stem == "__init__" else f"{package}.{stem}"] = os.path.join(ROOT, package, file)
    return found


MODULES = _modules()


def _imports(name: str, path: str) -> set[str]:
    """The project's modules that ``name`` imports anywhere in its source."""
    tree = ast.parse(open(path).read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parts + ([base] if base else []) if p)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _floor(name: str) -> int:
    return FLOORS.get(name.split(".")[0], TOP)


def test_the_walk_sees_the_imports_it_should():
    # a check of the checker: known arrows are found (top-level, in-function and relative imports)
    assert "engine.evaluation" in GRAPH["engine.jobs"]  # inside a function
    assert "training.losses" in GRAPH["training.trainer"]
    assert "attacks.base" in GRAPH["attacks.apgd"]
    assert "training.trainer" in GRAPH["trainer"]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _floor(n) < TOP))
def test_library_modules_import_only_downwards(name):
    floor, package = _floor(name), name.split(".")[0]
    upward = sorted(t for t in GRAPH[name] if _floor(t) > floor or (_floor(t) == floor and t.split(".")[0] != package))
    assert not upward, f"{name} (floor {floor}) imports {upward} (same floor, another package, or above)"


def test_no_library_module_imports_an_entry_script():
    offenders = {n: sorted(GRAPH[n] & set(ENTRY_SCRIPTS)) for n in MODULES if n not in ENTRY_SCRIPTS}
    assert not {n: t for n, t in offenders.items() if t}


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if nxt.split(".")[0] == node.split(".")[0] and (nxt == nxt.split(".")[0] or node == node.split(".")[0]):
                continue  # a package's __init__ handing names on, and its modules importing siblings through it
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_no_module_outside_attacks_lists_attack_names():
    from attacks import ATTACKS

    names = set(ATTACKS) - {"pgd"}  # "pgd" is also a word of prose (e.g. "the PGD step")
    for name, path in MODULES.items():
        if name.startswith("attacks"):
            continue
        literals = {node.value for node in ast.walk(ast.parse(open(path).read()))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not literals & names, f"{name} spells attack names {sorted(literals & names)}"


def test_no_library_module_over_600_lines():
    long = {n: sum(1 for _ in open(p)) for n, p in MODULES.items()}
    assert not {n: k for n, k in long.items() if k > 600}


PARSERS = {"parse", "parse_generation_args", "parse_inference_args", "parse_training_args", "parse_args",
           "parse_known_args"}
"""Functions that read a command line."""


def test_only_the_command_line_module_parses_command_lines():
    """A driver reads the user's flags once and completes them per run with typed values
    (``engine.cli.read_flags`` / ``complete``); no library module calls a parser on an argv it built.
    A module that is itself a command (``python -m data.phantom``) parses its own."""
    for name, path in MODULES.items():
        if name in ("engine.cli", *ENTRY_SCRIPTS) or 'if __name__ == "__main__":' in open(path).read():
            continue
        calls = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                 for node in ast.walk(ast.parse(open(path).read())) if isinstance(node, ast.Call)}
        assert not calls & PARSERS, f"{name} calls {sorted(calls & PARSERS)}"
