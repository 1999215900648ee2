"""Browser tests: Playwright driving Debian's Chromium against the UIs the project serves.

They run only through ``make test-browser`` (which sets ``VLM_GIST_BROWSER_TESTS=1`` and installs the
``browser`` extra); a plain ``make test`` / ``pytest`` deselects them. When they do run, a missing
Chromium or Playwright fails them with the command that installs it: never a silent pass.

Chromium is Debian's (``apt-get install -y chromium``, or ``$VLM_GIST_CHROMIUM``): Playwright's own
browser download cannot work offline. Every page gets a fresh profile; requests to any host other than
127.0.0.1 / localhost are aborted (and recorded, so a test can assert what a UI tried to fetch), and
the host resolver knows no other host, so nothing leaves the machine.

Screenshots go to ``$VLM_GIST_BROWSER_ARTIFACTS`` (default: a temp directory, printed at the end of the
run).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

HERE = Path(__file__).resolve().parent
ENABLE_ENV = "VLM_GIST_BROWSER_TESTS"
CHROMIUM_ENV = "VLM_GIST_CHROMIUM"
ARTIFACTS_ENV = "VLM_GIST_BROWSER_ARTIFACTS"
#: Launch flags: headless, no sandbox (CI runs as root), no GPU, and none of Chromium's own traffic.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)
LOCAL_HOSTS = ("127.0.0.1", "localhost")
VIEWPORT = {"width": 1280, "height": 800}

_artifacts: list[Path] = []
_deselected: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ENABLE_ENV) == "1":
        return
    ours = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if ours:
        ids = {id(item) for item in ours}
        items[:] = [item for item in items if id(item) not in ids]
        config.hook.pytest_deselected(items=ours)
        _deselected.extend(item.nodeid for item in ours)


def pytest_terminal_summary(terminalreporter) -> None:
    if _deselected:
        terminalreporter.write_line(
            f"{len(_deselected)} browser test(s) deselected: they run with `make test-browser`"
        )
    if _artifacts:
        terminalreporter.write_line("browser test screenshots:")
        for path in _artifacts:
            terminalreporter.write_line(f"  {path}")


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    configured = os.environ.get(CHROMIUM_ENV)
    candidates = [configured] if configured else ["/usr/bin/chromium", shutil.which("chromium")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        f"Chromium not found ({configured or '/usr/bin/chromium, chromium on PATH'}): the browser tests drive "
        "Debian's Chromium. Install it as root with `apt-get install -y chromium` (.ci/run does), or point "
        f"${CHROMIUM_ENV} at a Chromium binary.",
        pytrace=False,
    )


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright is not installed: `make test-browser` installs it (the project's `browser` extra: "
            "pip install -e '.[dev,browser]'); never `playwright install`, Debian's Chromium is used.",
            pytrace=False,
        )
    return sync_playwright


@pytest.fixture(scope="session")
def browser_artifacts(tmp_path_factory) -> Path:
    configured = os.environ.get(ARTIFACTS_ENV)
    directory = Path(configured) if configured else tmp_path_factory.mktemp("browser_artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@dataclass
class BrowserPage:
    """A Chromium page with a fresh profile. ``blocked``: URLs of other hosts the page tried to load
    (aborted); ``console_errors``: the page's console errors; ``screenshot(name)`` saves a PNG among the
    test artefacts."""

    page: object
    artifacts: Path
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def screenshot(self, name: str, **kwargs) -> Path:
        path = self.artifacts / name
        self.page.screenshot(path=str(path), **kwargs)
        _artifacts.append(path)
        return path

    def blocked_hosts(self) -> set[str]:
        return {urlsplit(url).hostname or url for url in self.blocked}


@pytest.fixture()
def new_page(
    chromium_executable: str, browser_artifacts: Path, tmp_path: Path
) -> Iterator[Callable[[], BrowserPage]]:
    """``new_page()`` opens Chromium (fresh user-data-dir under the test's temp dir) and returns a
    :class:`BrowserPage`; closed after the test.

    Playwright starts at the first ``new_page()``, not with the fixture: its sync API keeps an asyncio
    loop running in this thread, and the pipeline run in-process before it (``asyncio.run``) must not
    see one."""
    sync_playwright = _sync_playwright()
    contexts = []
    started = []

    def open_page() -> BrowserPage:
        if not started:
            started.append(sync_playwright().start())
        profile = tmp_path / f"chromium-profile-{len(contexts)}"
        context = started[0].chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium_executable,
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport=VIEWPORT,
        )
        contexts.append(context)
        page = context.pages[0] if context.pages else context.new_page()
        result = BrowserPage(page=page, artifacts=browser_artifacts)

        def route(route) -> None:
            url = route.request.url
            if url.startswith(("data:", "blob:")) or urlsplit(url).hostname in LOCAL_HOSTS:
                route.continue_()
            else:
                result.blocked.append(url)
                route.abort()

        context.route("**/*", route)
        page.on("console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None)
        return result

    try:
        yield open_page
    finally:
        for context in contexts:
            context.close()
        for playwright in started:
            playwright.stop()
