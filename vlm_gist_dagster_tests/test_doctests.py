"""Every docstring example of the package runs here, one test per module, so an example that goes
stale fails the suite instead of misleading its reader.

The modules are imported after the test session's environment is set (``conftest.py``), which is why
this is a test module and not pytest's ``--doctest-modules`` over the package folder.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import vlm_gist_dagster


def _modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(vlm_gist_dagster.__path__, "vlm_gist_dagster."))


def test_the_package_has_examples() -> None:
    """The finder sees the examples (a broken finder would make every module below pass vacuously)."""
    module = importlib.import_module("vlm_gist_dagster.protocol.leaderboard")
    assert sum(len(t.examples) for t in doctest.DocTestFinder().find(module)) >= 5


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see stdout)"
