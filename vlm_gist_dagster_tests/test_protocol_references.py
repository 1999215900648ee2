"""The code's references to the paper's protocol point at notes in the repository (``docs/protocol/``), and
every section or gotcha they name exists there: a reader can follow each one."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "protocol"
SOURCES = [
    *sorted((REPO / "vlm_gist_dagster").rglob("*.py")),
    *sorted((REPO / "vlm_gist_dagster_tests").rglob("*.py")),
    *sorted((REPO / "benchmarks").rglob("*.py")),
    REPO / "README.md",
]


def _sections(text: str) -> set[str]:
    return set(re.findall(r"^#+ ([0-9]+(?:\.[0-9]+)*)[. ]", text, flags=re.M))


def _gotchas(text: str) -> set[str]:
    start = text.index("## ", text.index("otchas") - 40)
    end = text.find("\n## ", start + 3)
    return set(re.findall(r"^(\d+)\. ", text[start : end if end > 0 else None], flags=re.M))


def test_no_reference_to_a_spec_outside_the_repository():
    this = Path(__file__).name
    stale = [
        f"{path.relative_to(REPO)}:{n}"
        for path in SOURCES
        if path.name != this
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bspec/(pipeline|evaluation|dagster)\.md|\bspec §", line)
    ]
    assert stale == []


def test_every_cited_section_and_gotcha_exists():
    docs = {name: (DOCS / f"{name}.md").read_text() for name in ("pipeline", "evaluation")}
    sections = {name: _sections(text) for name, text in docs.items()}
    gotchas = {name: _gotchas(text) for name, text in docs.items()}
    assert len(gotchas["pipeline"]) >= 20 and len(gotchas["evaluation"]) >= 20
    missing = []
    for path in SOURCES:
        text = path.read_text()
        for m in re.finditer(
            r"docs/protocol/(pipeline|evaluation)\.md,? (§|[Gg]otcha )(\d+(?:\.\d+)*)", text
        ):
            name, kind, number = m.groups()
            known = sections[name] if kind == "§" else gotchas[name]
            if number not in known:
                missing.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert missing == []
