"""Serving a review dataset in the FiftyOne App (``vlm-gist review`` without ``--no-launch``)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from urllib.parse import quote

#: The App's port when none is given: FiftyOne's own default.
DEFAULT_PORT = 5151
#: Only this machine can reach the App (use an SSH tunnel from elsewhere).
ADDRESS = "127.0.0.1"


def app_url(name: str, port: int, address: str = ADDRESS) -> str:
    """The App's page of dataset ``name``."""
    return f"http://{address}:{port}/datasets/{quote(name, safe='')}"


def serve(name: str, *, port: int = DEFAULT_PORT, say: Callable[[str], None] = print) -> int:
    """Launch the App on ``127.0.0.1:port`` with dataset ``name``, print its URL and serve until Ctrl-C
    or SIGTERM (both stop the App server and the database FiftyOne started)."""
    import fiftyone as fo

    dataset = fo.load_dataset(name)
    # remote=True: do not try to open a browser here; the user (or a test) opens the printed URL.
    session = fo.launch_app(dataset, port=port, address=ADDRESS, remote=True, auto=False)
    say(f"FiftyOne App: {app_url(name, port)}  (serving until Ctrl-C)")
    sys.stdout.flush()
    # SIGTERM as Ctrl-C, so that FiftyOne's exit hooks stop its server and database.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        session.close()
    return 0
