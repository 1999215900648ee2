"""Layers import one way (README, Development): ``protocol`` (the paper's method, pure) imports no other
layer and writes no file; ``stages`` and ``clients`` know nothing of Dagster; ``orchestration`` (Dagster
support code that holds no definitions) is imported by ``defs`` alone; only the entry points
(``definitions``, ``runner``, ``cli``) import ``defs``. Checked on the source's import statements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlm_gist_dagster"
#: Top-level subpackages/modules of vlm_gist_dagster each layer may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "clients": {"protocol", "files", "paths"},
    "datasets": {"protocol", "files", "paths"},
    "sim": {"protocol", "files", "paths", "datasets"},
    # stages may name the dataset copies (datasets/provenance.py) in the tables they write
    "stages": {"protocol", "clients", "datasets", "files", "paths", "parquet"},
    "model_registry": {"protocol", "files", "paths"},
    "files": set(),
    "parquet": {"files"},
    "review": {"protocol", "parquet", "files", "paths"},
    "vision_server": {"protocol"},
    # retry policy, pools, non-retried failures, metadata: Dagster support below defs (never defs itself)
    "orchestration": {"protocol", "clients", "datasets", "files", "paths", "parquet"},
    "preflight": {"protocol", "clients", "model_registry", "paths"},
    "paths": set(),
}
#: Calls that write files; protocol/ makes none (writers live in stages/ and files.py).
WRITING_CALLS = {"write_text", "write_bytes", "savefig", "to_csv", "to_parquet", "mkdir"}
#: ``os.<name>`` calls that write or move files.
WRITING_OS_CALLS = {"replace", "rename", "fdopen", "makedirs", "remove", "unlink"}
#: Known writers left in protocol/ and why; each entry must still hold a write (so a fix removes it).
PROTOCOL_WRITERS_PENDING = {
    "label_matching/definitions.py": "DefinitionsCache.write moves with the cache's concurrency fix (issue 13, item 4)",
}


def _internal_imports(path: Path) -> set[str]:
    """The top-level names of vlm_gist_dagster that ``path`` imports (absolute or relative)."""
    module = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(module[: len(module) - node.level])
                if path.name == "__init__.py":
                    base = list(module[: len(module) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts + [a.name] for a in node.names] if not node.module else [parts]
            else:
                names = [node.module.split(".")] if node.module else []
        else:
            continue
        for parts in names:
            if parts and parts[0] == "vlm_gist_dagster" and len(parts) > 1:
                found.add(parts[1])
    return found


def _files(layer: str) -> list[Path]:
    target = PACKAGE / layer
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_one_way(layer: str) -> None:
    assert _files(layer), layer
    bad = {
        str(path.relative_to(PACKAGE)): sorted(_internal_imports(path) - ALLOWED[layer] - {layer})
        for path in _files(layer)
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_only_entry_points_import_defs() -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "defs" in _internal_imports(path) and path.parent.name != "defs"
    }
    assert importers <= {"definitions.py", "runner.py", "cli.py"}


def test_only_defs_imports_orchestration() -> None:
    """The layers below ``defs`` (``ALLOWED`` above) never import ``orchestration``; neither does any other
    module outside ``defs``: it is support code for the definitions."""
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "orchestration" in _internal_imports(path) and path.parent.name != "orchestration"
    }
    assert importers, "defs imports orchestration: the finder sees those imports"
    assert {i for i in importers if not i.startswith("defs/")} == set()


def _writing_calls(path: Path) -> list[str]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            on_os = isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
            if (
                node.func.attr in WRITING_CALLS
                or (on_os and node.func.attr in WRITING_OS_CALLS)
                or (node.func.attr == "save" and node.args)
            ):
                calls.append(f"{node.func.attr} (line {node.lineno})")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            if any(set(str(m)) & set("wax+") for m in modes):
                calls.append(f"open (line {node.lineno})")
    return calls


def test_protocol_writes_no_file_and_names_no_font() -> None:
    writers = {}
    for path in _files("protocol"):
        calls = _writing_calls(path)
        if calls:
            writers[str(path.relative_to(PACKAGE / "protocol"))] = calls
        assert ".ttf" not in path.read_text(), f"{path}: a font file path in protocol/"
    assert set(writers) == set(PROTOCOL_WRITERS_PENDING), writers
