"""The layout's rules, checked on the source: one owner module per external dependency and per
OS-level entry point, only cli.py prints, renderers import no OS surface. A new import in the wrong
place fails here, not in a review."""

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mptcpize_py"

# top-level module imported -> the only modules allowed to import it (paths relative to mptcpize_py/)
OWNERS = {
    "bcc": {"program/loader.py"},                  # distro python3-bpfcc: the loader child only
    # The loader child's code: `check` asks the toolchain in-process; the daemon and `run` start it
    # as a child (program/rewriter.py) and never import it.
    "mptcpize_py.program.loader": {"support.py"},
    "pyroute2": {"paths/netlink.py"},              # MPTCP path-manager netlink
    "systemd": {"host/systemd.py"},                # python3-systemd: journald, sd_notify
    "psutil": {"host/procfs.py"},
    "subprocess": {"host/systemd.py", "run/spawn.py"},   # systemctl; CMD itself
}
LIBC_OWNER = "host/libc.py"                        # the one ctypes.CDLL of libc
LIBBPF_OWNER = "program/maps.py"                   # the one of libbpf (maps, ring buffer)
PRINTER = "cli.py"
PURE_RENDERERS = {"report.py", "metrics.py", "status.py", "display.py"}
OS_MODULES = {"os", "socket", "ctypes", "subprocess", "fcntl", "mptcpize_py.host"}


def modules() -> list[tuple[str, ast.Module, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        out.append((path.relative_to(PACKAGE).as_posix(), ast.parse(text, str(path)), text))
    return out


def imported(tree: ast.Module) -> set[str]:
    """Every module name an import statement names, anywhere in the file (lazy imports too)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_package_is_found():
    assert len(modules()) > 20


@pytest.mark.parametrize("dependency", sorted(OWNERS))
def test_each_dependency_has_one_owner(dependency):
    importers = {rel for rel, tree, _ in modules()
                 if any(n == dependency or n.startswith(dependency + ".") for n in imported(tree))}
    assert importers <= OWNERS[dependency], \
        f"{dependency} imported outside its owner {sorted(OWNERS[dependency])}: {sorted(importers - OWNERS[dependency])}"


def test_each_declared_dependency_is_used_by_its_owner():
    """What pyproject.toml declares (and the Debian package depends on) is imported by its owner."""
    declared = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in declared}
    assert names == {"psutil", "pyroute2"}
    trees = {rel: tree for rel, tree, _ in modules()}
    for name in names:
        for owner in OWNERS[name]:
            assert name in imported(trees[owner]), f"{name} is declared, but its owner {owner} never imports it"


def test_only_the_two_owners_load_a_library():
    loaders = {rel for rel, _, text in modules() if "CDLL(" in text or "ctypes.cdll" in text}
    assert loaders <= {LIBC_OWNER, LIBBPF_OWNER}, \
        f"ctypes.CDLL outside {LIBC_OWNER} and {LIBBPF_OWNER}: {sorted(loaders - {LIBC_OWNER, LIBBPF_OWNER})}"


def code_strings(tree: ast.Module) -> set[str]:
    """String constants that are not docstrings."""
    docs = {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs}


@pytest.mark.parametrize("library, owner", [(r"lib(bpf|bcc_bpf|bcc)\.so", LIBBPF_OWNER),
                                            (r"libc\.so", LIBC_OWNER)])
def test_each_library_is_named_by_its_owner_only(library, owner):
    namers = {rel for rel, tree, _ in modules() if any(re.search(library, s) for s in code_strings(tree))}
    assert namers <= {owner}, f"{library} named outside {owner}: {sorted(namers - {owner})}"


def test_the_long_lived_side_imports_no_compiler():
    """The daemon, `run` and the program handle they hold: importing them (and the cli) loads
    neither bcc nor the loader child's module."""
    code = ("import json, sys\n"
            "import mptcpize_py.cli, mptcpize_py.daemon.service, mptcpize_py.run.bpf\n"
            "import mptcpize_py.program.rewriter\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'bcc' or m.startswith('bcc.')\n"
            "                        or m == 'mptcpize_py.program.loader')))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"}).stdout
    assert json.loads(out) == []


def test_only_the_cli_prints():
    printers = set()
    for rel, tree, _ in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printers.add(rel)
            if isinstance(node, ast.Attribute) and node.attr == "stdout" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                printers.add(rel)
    assert printers <= {PRINTER}, f"printing outside {PRINTER}: {sorted(printers - {PRINTER})}"


def test_renderers_touch_no_os_surface():
    for rel, tree, _ in modules():
        if rel in PURE_RENDERERS:
            bad = {n for n in imported(tree) if n.split(".")[0] in OS_MODULES or n.startswith("mptcpize_py.host")}
            assert not bad, f"{rel} is a pure renderer but imports {sorted(bad)}"


def test_no_relative_imports():
    """Absolute imports only: a module's dependencies read the same wherever it moves."""
    for rel, tree, _ in modules():
        rel_imports = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert not rel_imports, f"{rel}: relative imports {rel_imports}"


# The layers, lowest first: a module imports from its own layer or a lower one, never a higher one
# (docs/ARCHITECTURE.md). Each entry is a module or a package prefix; the longest match decides.
LAYERS = [
    ("base", {"mptcpize_py", "abi", "errors", "locations", "display", "status"}),
    ("host", {"host"}),
    ("engines", {"policy", "program", "diag", "daemon.protocol", "daemon.client"}),
    ("composers", {"resolve", "policysync", "paths", "run"}),
    ("commands", {"daemon", "enable", "support", "report", "metrics"}),
    ("cli", {"cli", "__main__"}),
]


def module_name(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["mptcpize_py", *parts])


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere (lazy imports too); `from P import M` of a
    module M counts as M. A package's own __init__ (a parent) is not an edge."""
    trees = {module_name(rel): tree for rel, tree, _ in modules()}

    def owner(name: str) -> str | None:
        while name and name not in trees:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, tree in trees.items():
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names if a.name.startswith("mptcpize_py"))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and \
                    (node.module or "").startswith("mptcpize_py"):
                deps.update(owner(f"{node.module}.{a.name}") for a in node.names)
        graph[name] = {d for d in deps if d and d != name and not name.startswith(d + ".")}
    return graph


def layer_of(module: str) -> int:
    rel = module.removeprefix("mptcpize_py").removeprefix(".") or "mptcpize_py"
    best, rank = -1, None
    for i, (_name, members) in enumerate(LAYERS):
        for m in members:
            if (rel == m or rel.startswith(m + ".")) and len(m) > best:
                best, rank = len(m), i
    assert rank is not None, f"{module} is in no layer of LAYERS"
    return rank


def test_no_import_circles():
    graph = import_graph()
    circles = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            circles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for dep in sorted(graph[node]):
            visit(dep, path + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_imports_point_down_the_layers():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in sorted(import_graph().items()) for d in sorted(deps)
              if layer_of(d) > layer_of(m)]
    assert not upward, "a lower layer imports a higher one: " + "; ".join(upward)
