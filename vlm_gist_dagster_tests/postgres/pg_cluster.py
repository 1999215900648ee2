"""A throwaway PostgreSQL cluster for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a temp directory,
listening on 127.0.0.1 on a free port, trust authentication, removed when stopped.

The binaries are Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``, the newest
version found) or ``$VLM_GIST_PG_BIN``. PostgreSQL refuses to run as root, so when the tests run as
root (CI) the cluster runs as the ``postgres`` user that the package creates.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN_ENV = "VLM_GIST_PG_BIN"
INSTALL_HINT = "install PostgreSQL: `apt-get install -y postgresql` (as root), or set $VLM_GIST_PG_BIN"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (the message says how to install them)."""


def pg_bin_dir() -> Path:
    """The directory of ``initdb``/``pg_ctl``: ``$VLM_GIST_PG_BIN``, else Debian's newest version."""
    env = os.environ.get(PG_BIN_ENV)
    if env:
        if not (Path(env) / "initdb").is_file():
            raise PostgresUnavailable(f"${PG_BIN_ENV}={env} has no initdb; {INSTALL_HINT}")
        return Path(env)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not versions:
        raise PostgresUnavailable(
            f"PostgreSQL server binaries not found under /usr/lib/postgresql; {INSTALL_HINT}"
        )
    return versions[-1].parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresCluster:
    """A running cluster: connect as ``user`` (no password) to ``host``:``port``."""

    root: Path
    bin_dir: Path
    port: int
    run_as: str | None
    host: str = "127.0.0.1"
    user: str = "postgres"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{db}"

    def env(self, db: str) -> dict[str, str]:
        """The variables that ``deploy/dagster.yaml`` reads, pointing at database ``db``."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": db,
        }

    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return [*prefix, *args]

    def run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self._cmd(str(self.bin_dir / tool), *args), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-2000:]}"
            )
        return result

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        self.run("createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, name)
        return self.url(name)

    def database_size(self, name: str) -> int:
        """Bytes on disk of database ``name`` (``pg_database_size``)."""
        out = self.run(
            "psql",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            name,
            "-tAc",
            f"select pg_database_size('{name}')",
        )
        return int(out.stdout.strip())

    def stop(self) -> None:
        try:
            subprocess.run(
                self._cmd(
                    str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"
                ),
                capture_output=True,
                timeout=60,
            )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(*, max_connections: int = 200) -> PostgresCluster:
    """Initialise and start a cluster in a new temp directory (fsync off: a test database need not
    survive a power cut). Raises :class:`PostgresUnavailable` when PostgreSQL is not installed."""
    bin_dir = pg_bin_dir()
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="vlm_gist_pg_"))
    if run_as:
        shutil.chown(root, user=run_as)
    cluster = PostgresCluster(root=root, bin_dir=bin_dir, port=_free_port(), run_as=run_as)
    try:
        cluster.run(
            "initdb",
            "-D",
            str(cluster.data_dir),
            "-U",
            cluster.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            timeout=180,
        )
        options = (
            f"-c listen_addresses={cluster.host} -c port={cluster.port} -k {root} -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={max_connections}"
        )
        cluster.run(
            "pg_ctl",
            "-D",
            str(cluster.data_dir),
            "-o",
            options,
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )
    except BaseException:
        log = root / "server.log"
        detail = log.read_text()[-2000:] if log.is_file() else ""
        shutil.rmtree(root, ignore_errors=True)
        if detail:
            raise RuntimeError(f"PostgreSQL did not start:\n{detail}") from None
        raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((cluster.host, cluster.port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    return cluster
