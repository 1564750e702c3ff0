"""Who may import whom (../shared/ARCHITECTURE.md), checked on the source so a stray import fails CI."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "edgeloop"

# part -> edgeloop parts it may import (itself always allowed; `edgeloop` top-level for __version__)
ALLOWED = {
    "_native": set(),
    "kernels": {"_native"},
    "protocol": set(),
    "config": set(),
    "store": {"config"},
    "serving": {"kernels", "protocol", "config"},
    "mesh": {"kernels", "protocol", "config"},
    "ct": {"kernels", "config"},
    "delivery": {"mesh", "protocol", "config"},
    # composition layers: node and client compose the parts; coordinator likewise
    "node": {"kernels", "protocol", "config", "serving", "mesh", "delivery"},
    "client": {"protocol", "mesh", "config", "kernels"},
    "coordinator": {"kernels", "protocol", "config", "ct", "delivery", "mesh", "store"},
    # commands; `config` is a stdlib-only leaf every command needs to read its --config file;
    # `bench` is the in-package benchmark harness behind `edgeloop bench`
    "cli": {"node", "coordinator", "protocol", "perf", "config", "client", "bench"},
    "perf": {"protocol"},
    "bench": {"kernels"},
}


def _part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imported_parts(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "edgeloop":
                names = [f"edgeloop.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            bits = name.split(".")
            if bits[0] == "edgeloop" and len(bits) > 1:
                yield node.lineno, bits[1]


def test_imports_follow_the_architecture():
    violations = []
    sources = [p for p in PACKAGE.rglob("*.py") if "_gen" not in p.parts]
    assert len(sources) > 20
    for path in sources:
        if path.parent == PACKAGE and path.name in ("__init__.py", "__main__.py"):
            continue
        part = _part_of(path)
        assert part in ALLOWED, f"{path}: part {part!r} is not in the architecture table; add it deliberately"
        for lineno, target in _imported_parts(ast.parse(path.read_text(), str(path))):
            if target != part and target not in ALLOWED[part]:
                violations.append(f"{path.relative_to(PACKAGE)}:{lineno}: {part} imports {target}")
    assert not violations, "imports outside the architecture:\n" + "\n".join(violations)


def test_serving_and_ct_never_meet():
    assert "ct" not in ALLOWED["serving"] and "serving" not in ALLOWED["ct"]
    assert all("cli" not in allowed for allowed in ALLOWED.values())
