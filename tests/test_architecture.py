"""Who may import whom, checked on the source against the parts table in docs/architecture.md.

The table is the one truth: a new part needs only a row there.  The checker resolves relative
imports and ``importlib.import_module`` / ``__import__`` names, checks third-party imports per part,
and the "never" rules (serving and ct never meet; nothing imports cli) are checked on the import
graph the code really has.  The checker itself is tested on small synthetic sources.
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "edgeloop"
DOC = ROOT / "docs" / "architecture.md"
TABLE_HEADING = "## Parts table"
ENTRY_POINTS = {"__init__.py", "__main__.py"}  # edgeloop/ itself: version and `python -m edgeloop`
NEVER_MEET = (("serving", "ct"), ("ct", "serving"))
LEAVES = {"kernels": {"_native"}, "store": {"config"}}  # what these may reach of edgeloop at all


@dataclass(frozen=True)
class Rule:
    parts: frozenset[str]  # edgeloop parts, or "part.module" for one module of a part
    third_party: frozenset[str]  # top-level packages, or "pkg.module" for one module


def parse_table(text: str) -> dict[str, Rule]:
    """The rows of the parts table: part -> Rule (cells hold `names` or —)."""
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    rules = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        names = [re.findall(r"`([^`]+)`", c) for c in cells]
        rules[names[0][0]] = Rule(frozenset(names[2]), frozenset(names[3]))
    return rules


def part_of(rel: str) -> str:
    """``serving/batcher.py`` -> ``serving``; ``client.py`` -> ``client``."""
    return rel.split("/", 1)[0].removesuffix(".py")


def module_of(rel: str) -> tuple[str, str]:
    """(module name, package name) of a source path relative to src/edgeloop."""
    bits = ["edgeloop", *rel.removesuffix(".py").split("/")]
    if bits[-1] == "__init__":
        bits.pop()
        return ".".join(bits), ".".join(bits)
    return ".".join(bits), ".".join(bits[:-1])


def _resolve_relative(package: str, level: int, module: str | None) -> str | None:
    base = package.split(".")
    if level - 1 >= len(base):
        return None  # climbs above edgeloop
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _dynamic_name(call: ast.Call, module: str, package: str) -> str | None:
    """The name an import_module/__import__ call imports ("" when it cannot be told), None if not such a call."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        text, complete = arg.value, True
    elif isinstance(arg, ast.JoinedStr):  # f"edgeloop._native.{name}": the leading text decides
        text, complete = "", False
        for piece in arg.values:
            if isinstance(piece, ast.Constant):
                text += piece.value
            elif isinstance(piece.value, ast.Name) and piece.value.id in ("__name__", "__package__"):
                text += module if piece.value.id == "__name__" else package
            else:
                break
        else:
            complete = True
        if not complete:  # keep only whole names: f"edgeloop.c{x}" could be any part
            text = text.rsplit(".", 1)[0] if "." in text else ""
            if text in ("", "edgeloop"):
                return ""
    else:
        return ""
    if text.startswith("."):
        pkg = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "package"), None)
        if not (isinstance(pkg, ast.Name) and pkg.id == "__package__"
                or isinstance(pkg, ast.Constant) and isinstance(pkg.value, str)):
            return ""
        anchor = package if isinstance(pkg, ast.Name) else pkg.value
        level = len(text) - len(text.lstrip("."))
        return _resolve_relative(anchor, level, text.lstrip(".") or None) or ""
    return text


def imports(source: str, rel: str):
    """(line, imported dotted name or None when unresolvable, how) for every import in ``source``."""
    module, package = module_of(rel)
    for node in ast.walk(ast.parse(source, rel)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, "import"
        elif isinstance(node, ast.ImportFrom):
            base = node.module if node.level == 0 else _resolve_relative(package, node.level, node.module)
            if base is None:
                yield node.lineno, None, f"relative import {'.' * node.level}{node.module or ''} climbs out of edgeloop"
                continue
            for alias in node.names:  # `from edgeloop import ct` imports edgeloop.ct
                yield node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base, "from"
        elif isinstance(node, ast.Call):
            name = _dynamic_name(node, module, package)
            if name == "":
                yield node.lineno, None, "dynamic import the checker cannot resolve (use a constant name)"
            elif name is not None:
                yield node.lineno, name, "dynamic"


def _allowed(name: str, entries: frozenset[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in entries)


def check(sources: dict[str, str], rules: dict[str, Rule]) -> tuple[list[str], dict[str, set[str]]]:
    """Violations of ``rules`` in ``sources`` (path relative to src/edgeloop -> code), and the part graph."""
    violations: list[str] = []
    graph: dict[str, set[str]] = {}
    parts = {part_of(rel) for rel in sources}
    for rel, source in sorted(sources.items()):
        if "/" not in rel and rel in ENTRY_POINTS:
            continue
        part = part_of(rel)
        rule = rules.get(part)
        if rule is None:
            violations.append(f"{rel}: part {part!r} has no row in the parts table of docs/architecture.md")
            continue
        for lineno, name, how in imports(source, rel):
            where = f"{rel}:{lineno}"
            if name is None:
                violations.append(f"{where}: {how}")
                continue
            bits = name.split(".")
            top = bits[0]
            if top == "edgeloop":
                target = bits[1] if len(bits) > 1 else None
                if target is None or (target not in parts and target not in rules):
                    continue  # edgeloop itself (__version__)
                if target == part:
                    continue
                graph.setdefault(part, set()).add(target)
                if not _allowed(".".join(bits[1:]), rule.parts):
                    violations.append(f"{where}: {part} imports edgeloop.{'.'.join(bits[1:])} ({how})")
            elif how != "from" or "." in name:
                module = name if how != "from" else name.rsplit(".", 1)[0]
                if module.split(".")[0] in sys.stdlib_module_names or module.split(".")[0] == "__future__":
                    continue
                if not (_allowed(module, rule.third_party) or how == "from" and _allowed(name, rule.third_party)):
                    violations.append(f"{where}: {part} imports third-party {module!r}, not in its row")
    return violations, graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def never_violations(graph: dict[str, set[str]]) -> list[str]:
    """The rules that hold whatever the table says, checked on the graph the code has."""
    out = [f"{a} reaches {b} (through imports: {sorted(reachable(graph, a))})"
           for a, b in NEVER_MEET if b in reachable(graph, a)]
    out += [f"{part} imports cli" for part, targets in graph.items() if part != "cli" and "cli" in targets]
    out += [f"{part} reaches {sorted(reachable(graph, part) - allowed)} beyond {sorted(allowed)}"
            for part, allowed in LEAVES.items() if reachable(graph, part) - allowed]
    return out


def package_sources() -> dict[str, str]:
    return {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in PACKAGE.rglob("*.py") if "_gen" not in p.parts}


RULES = parse_table(DOC.read_text())


# ---------------------------------------------------------------------------------------------- the code
def test_the_table_has_every_part_and_the_parts_the_design_names():
    assert {"kernels", "protocol", "config", "serving", "mesh", "node", "client", "cli", "perf", "bench",
            "store", "coordinator", "ct", "features", "delivery", "demo"} <= RULES.keys()
    assert RULES["kernels"].third_party == {"numpy", "scipy.linalg"} and RULES["kernels"].parts == {"_native"}


def test_imports_follow_the_architecture():
    sources = package_sources()
    assert len(sources) > 20
    violations, _graph = check(sources, RULES)
    assert not violations, "imports outside docs/architecture.md's parts table:\n" + "\n".join(violations)


def test_serving_and_ct_never_meet_and_nothing_imports_cli():
    _violations, graph = check(package_sources(), RULES)
    assert "serving" in graph and "cli" in graph  # the graph is the code's, not empty
    assert not never_violations(graph)


def test_the_readme_links_to_this_architecture():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/architecture.md)" in readme and "../shared" not in readme


# ---------------------------------------------------------------------------------------------- the checker
SMALL = {
    "serving": Rule(frozenset({"kernels", "protocol"}), frozenset({"numpy"})),
    "kernels": Rule(frozenset({"_native"}), frozenset({"numpy"})),
    "protocol": Rule(frozenset(), frozenset({"grpc"})),
    "ct": Rule(frozenset({"kernels"}), frozenset({"numpy"})),
    "delivery": Rule(frozenset({"mesh.placement"}), frozenset()),
    "mesh": Rule(frozenset(), frozenset()),
    "cli": Rule(frozenset({"serving"}), frozenset()),
}


def violations_in(rel: str, source: str, rules=SMALL) -> list[str]:
    return check({rel: source, "kernels/__init__.py": "", "ct/__init__.py": "", "mesh/__init__.py": ""}, rules)[0]


@pytest.mark.parametrize("rel, source, expected", [
    ("serving/batcher.py", "from ..ct import monitor\n", "serving imports edgeloop.ct.monitor"),
    ("serving/sub/deep.py", "from ...ct.drift import psi\n", "serving imports edgeloop.ct.drift.psi"),
    ("serving/batcher.py", "from .. import ct\n", "serving imports edgeloop.ct"),
    ("serving/__init__.py", "from . import x\nfrom .. import ct\n", "serving imports edgeloop.ct"),
    ("serving/batcher.py", "from .... import os\n", "climbs out of edgeloop"),
    ("serving/x.py", 'import importlib\nimportlib.import_module("edgeloop.ct")\n', "serving imports edgeloop.ct"),
    ("serving/x.py", 'from importlib import import_module\nimport_module("..ct", __package__)\n',
     "serving imports edgeloop.ct"),
    ("serving/x.py", 'import importlib\nimportlib.import_module(f"edgeloop.ct.{name}")\n',
     "serving imports edgeloop.ct"),
    ("serving/x.py", '__import__("edgeloop.ct")\n', "serving imports edgeloop.ct"),
    ("serving/x.py", "import importlib\nimportlib.import_module(name)\n", "cannot resolve"),
    ("serving/x.py", 'import importlib\nimportlib.import_module(f"edgeloop.c{t}")\n', "cannot resolve"),
    ("serving/x.py", "import torch\n", "serving imports third-party 'torch'"),
    ("serving/x.py", "from sklearn.linear_model import Ridge\n", "third-party 'sklearn.linear_model'"),
    ("kernels/x.py", "import scipy.linalg\n", "kernels imports third-party 'scipy.linalg'"),
    ("kernels/x.py", "from edgeloop import serving\n", "kernels imports edgeloop.serving"),
    ("delivery/x.py", "from edgeloop.mesh.router import Router\n", "delivery imports edgeloop.mesh.router"),
    ("newpart/x.py", "import os\n", "part 'newpart' has no row"),
])
def test_the_checker_catches(rel, source, expected):
    found = violations_in(rel, source)
    assert any(expected in v for v in found), found


@pytest.mark.parametrize("rel, source", [
    ("serving/x.py", "import os, json\nfrom collections import abc\nfrom __future__ import annotations\n"),
    ("serving/x.py", "import numpy as np\nfrom numpy.typing import NDArray\n"),
    ("serving/x.py", "from ..kernels import stats\nfrom . import sibling\nfrom edgeloop import __version__\n"),
    ("kernels/x.py", 'import importlib\nimportlib.import_module(f"edgeloop._native.{name}")\n'),
    ("cli/__init__.py", 'import importlib\nimportlib.import_module(f"{__name__}.{info.name}")\n'),
    ("delivery/x.py", "from edgeloop.mesh.placement import Placement\nfrom edgeloop.mesh import placement\n"),
])
def test_the_checker_accepts(rel, source):
    assert violations_in(rel, source) == []


def test_never_rules_look_at_the_code_graph():
    """Even when a table row would allow it, serving reaching ct (here through kernels) is refused."""
    lax = {**SMALL, "kernels": Rule(frozenset({"ct"}), frozenset())}
    violations, graph = check({"serving/a.py": "from edgeloop.kernels import k\n",
                               "kernels/k.py": "from edgeloop.ct import train\n", "ct/__init__.py": ""}, lax)
    assert violations == []
    assert any("serving reaches ct" in v for v in never_violations(graph))
    _v, graph = check({"mesh/m.py": "from edgeloop.cli import main\n", "cli/__init__.py": ""},
                      {**SMALL, "mesh": Rule(frozenset({"cli"}), frozenset())})
    assert "mesh imports cli" in never_violations(graph)


def test_the_table_parser_reads_rows_and_dashes():
    doc = ("## Parts table\n\n| part | job | parts | third-party |\n|---|---|---|---|\n"
           "| `x` | does x | `config`, `mesh.placement` | `numpy` |\n| `y` | y | — | — |\n\n## Next\n| `z` | | | |\n")
    assert parse_table(doc) == {"x": Rule(frozenset({"config", "mesh.placement"}), frozenset({"numpy"})),
                                "y": Rule(frozenset(), frozenset())}
