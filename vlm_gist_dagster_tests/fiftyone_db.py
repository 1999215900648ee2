"""One MongoDB for FiftyOne per test session, private to it, and up before the first test uses it.

Left to itself, FiftyOne starts its database on first use and waits only until ``mongod`` has bound a
port; on a loaded machine the first queries could still meet ``ServerSelectionTimeoutError: ...
Connection refused``. Worse, FiftyOne's database service is shared per machine: a session attaches to
any ``mongod`` another FiftyOne process started (with that process's data directory), which dies when
that other session ends and removes its temp directory. Here every test session starts its own
``mongod`` (through FiftyOne's own service wrapper, which stops it when this process exits) on a free
loopback port with a data directory in the session's temp directory, waits until it answers, and
points FiftyOne at it with ``database_uri``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

#: How long to wait for mongod to answer (a cold start on a loaded 2-core machine takes seconds).
READY_TIMEOUT_S = 120.0
_STATE: dict[str, object] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(uri: str) -> bool:
    import pymongo
    import pymongo.errors

    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000)
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def start(dbpath: Path, attempts: int = 3) -> str:
    """Start the session's mongod (once) and return its URI; FiftyOne is pointed at it."""
    if "uri" in _STATE:
        return str(_STATE["uri"])
    import fiftyone
    from fiftyone.core.service import DatabaseService

    dbpath.mkdir(parents=True, exist_ok=True)
    wrapper = Path(fiftyone.__file__).parent / "service" / "main.py"
    last = ""
    for _ in range(attempts):
        port = _free_port()  # another process may take it before mongod binds: then try another
        command = [
            sys.executable,
            str(wrapper),
            "--51-service",
            "vlm_gist_tests_db",  # not FiftyOne's "db --multi": no other session can attach to it
            DatabaseService.find_mongod(),
            "--dbpath",
            str(dbpath),
            "--logpath",
            str(dbpath / "mongod.log"),
            "--port",
            str(port),
            "--bind_ip",
            "127.0.0.1",
            "--nounixsocket",
        ]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, env={**os.environ, "FIFTYONE_DISABLE_SERVICES": "1"}
        )
        uri = f"mongodb://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _ping(uri):
                _STATE.update(uri=uri, process=process)
                os.environ["FIFTYONE_DATABASE_URI"] = uri
                if "fiftyone" in sys.modules:  # config already read from the environment: set it too
                    sys.modules["fiftyone"].config.database_uri = uri
                return uri
            time.sleep(0.2)
        last = f"mongod on port {port} " + ("exited" if process.poll() is not None else "did not answer")
        _stop(process)
    log = dbpath / "mongod.log"
    tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
    raise RuntimeError(f"could not start the tests' MongoDB for FiftyOne ({last}); mongod.log ends:\n{tail}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        if process.stdin is not None:
            process.stdin.close()  # the wrapper stops mongod when its parent's pipe closes
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop() -> None:
    """Stop the session's mongod, if one was started (registered with atexit by the conftest, so that it
    runs after FiftyOne's own exit hook, which still queries the database)."""
    process = _STATE.pop("process", None)
    _STATE.pop("uri", None)
    if isinstance(process, subprocess.Popen):
        _stop(process)
