"""The package layering: imports go one way, and reading a store never imports torch, datasets or
transformers.

    format  <-  storage  <-  read  <-  ingest          read  <-  train (torch)
    compat, cli, demo on top; testing for tests/benchmarks/demo

Checked twice: statically (module-level imports of every module, parsed with ``ast``) and
dynamically (``sys.modules`` of fresh interpreters after real work).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

import zarrtok

PACKAGE_DIR = os.path.dirname(zarrtok.__file__)

#: package -> packages of zarrtok it may import at module level ("errors" is a leaf everyone may use)
ALLOWED = {
    "format": {"format"},
    "storage": {"format", "storage"},
    "read": {"format", "storage", "read"},
    "ingest": {"format", "storage", "read", "ingest"},
    "train": {"format", "storage", "read", "train"},
    "compat": {"format", "storage", "read", "ingest", "train", "compat"},
    "testing": {"testing"},
}
#: third-party modules a package must not import at module level
FORBIDDEN_THIRD_PARTY = {
    "format": {"torch", "datasets", "transformers", "tokenizers", "zarr", "fsspec"},
    "storage": {"torch", "datasets", "transformers", "tokenizers"},
    "read": {"torch", "datasets", "transformers", "tokenizers"},
    "ingest": {"torch"},
}


def _module_level_imports(path: str, package: str) -> set[str]:
    """Absolute names imported at module level (not inside functions) by one source file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    rel = os.path.relpath(path, PACKAGE_DIR).replace(os.sep, "/")
    parts = ["zarrtok", *rel[:-3].split("/")]
    if parts[-1] == "__init__":
        parts.pop()
    names: set[str] = set()
    for node in tree.body:  # module level only: function-level imports are deliberate lazy imports
        nodes = [node]
        if isinstance(node, ast.If):  # e.g. `if TYPE_CHECKING:` blocks are not runtime imports
            continue
        if isinstance(node, ast.Try):
            nodes = node.body
        for n in nodes:
            if isinstance(n, ast.Import):
                names.update(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                if n.level:
                    base = parts[: len(parts) - n.level + (1 if rel.endswith("__init__.py") else 0)]
                    mod = ".".join(base + ([n.module] if n.module else []))
                else:
                    mod = n.module or ""
                names.add(mod)
                if n.level and not n.module:  # `from . import x`
                    names.update(f"{mod}.{a.name}" for a in n.names)
    return names


def _sources():
    for package in ALLOWED:
        for root, _, files in os.walk(os.path.join(PACKAGE_DIR, package)):
            for f in files:
                if f.endswith(".py"):
                    yield package, os.path.join(root, f)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_one_way(package):
    bad = []
    for pkg, path in _sources():
        if pkg != package:
            continue
        for name in _module_level_imports(path, pkg):
            top = name.split(".")
            if top[0] == "zarrtok" and len(top) > 1 and top[1] not in ("errors", "__version__"):
                if top[1] not in ALLOWED[pkg]:
                    bad.append(f"{os.path.relpath(path, PACKAGE_DIR)} imports {name}")
            elif top[0] in FORBIDDEN_THIRD_PARTY.get(pkg, ()):
                bad.append(f"{os.path.relpath(path, PACKAGE_DIR)} imports {name} at module level")
    assert not bad, "\n".join(bad)


def test_no_module_shadows_a_function_its_parent_exports():
    import importlib

    for pkg in ["zarrtok", *[f"zarrtok.{p}" for p in ALLOWED]]:
        module = importlib.import_module(pkg)
        exported = [n for n in getattr(module, "__all__", []) if callable(getattr(module, n, None))]
        directory = os.path.dirname(module.__file__)
        clashes = [n for n in exported if os.path.exists(os.path.join(directory, f"{n}.py"))
                   or os.path.isdir(os.path.join(directory, n))]
        assert not clashes, f"{pkg}: modules named like exported functions: {clashes}"


def _run(code: str) -> str:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_reading_a_store_imports_no_torch_datasets_or_transformers(small_chunk_store):
    loaded = _run(
        "import sys, zarrtok\n"
        f"store = zarrtok.open({small_chunk_store.url!r})\n"
        "t = store.tokens('train'); t[0:10]; t[len(t) - 5:]; store.documents('train'); store.info()\n"
        "print(','.join(m for m in ('torch', 'datasets', 'transformers', 'zarrtok.train', 'zarrtok.ingest')"
        " if m in sys.modules))"
    )
    assert loaded == "", f"reading a store imported: {loaded}"


def test_read_and_ingest_packages_import_without_torch():
    loaded = _run(
        "import sys, zarrtok.read, zarrtok.ingest.builder, zarrtok.ingest.writer, zarrtok.storage, zarrtok.format\n"
        "print(','.join(m for m in ('torch', 'zarrtok.train') if m in sys.modules))"
    )
    assert loaded == "", f"imported: {loaded}"


def test_import_zarrtok_is_lazy():
    loaded = _run("import sys, zarrtok\nprint(','.join(m for m in sys.modules if m.startswith('zarrtok.')))")
    assert set(loaded.split(",")) <= {"zarrtok.errors"}, loaded
