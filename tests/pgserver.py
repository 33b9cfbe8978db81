"""A PostgreSQL server of a test's own: initdb in a temporary folder, a free loopback port, a role
with a password (so "no password in any log" means something), stopped and started at will.

The server refuses to run as root; tests and CI run as root here, so the server runs as the
`postgres` OS user (``runuser -u postgres --``) in a folder that user owns. Where the server
binaries (``/usr/lib/postgresql/*/bin``) or psycopg are missing, `why_not()` says so and the tests
skip -- unless ``DSARA_REQUIRE_POSTGRES=1`` (``.ci/run``), where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

ROLE, DB = "dsara", "dsara"


def bin_dir() -> Path | None:
    """The newest installed server's bin folder (holding initdb and pg_ctl), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def why_not() -> str | None:
    """None if a private server can be started here, else why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'dsara[postgres]')"
    if bin_dir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` OS user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and there is no runuser to start the server as `postgres`"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`start()`, `stop()`, `url`; `close()` stops it and removes its folder."""

    def __init__(self):
        self.bin = bin_dir()
        self.folder = Path(tempfile.mkdtemp(prefix="dsara-pg-"))
        self.data, self.logfile = self.folder / "data", self.folder / "server.log"
        self.password = secrets.token_hex(12)
        self.port = free_port()
        self.url = f"postgresql+psycopg://{ROLE}:{self.password}@127.0.0.1:{self.port}/{DB}"
        as_postgres = os.geteuid() == 0
        self.prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
        pwfile = self.folder / "pw"
        pwfile.write_text(self.password + "\n")
        if as_postgres:
            entry = pwd.getpwnam("postgres")
            for p in (self.folder, pwfile):
                os.chown(p, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", self.data, "-U", ROLE, f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                  "--no-sync")  # a throw-away cluster: no fsync (seconds saved)
        pwfile.unlink()
        self.start()
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DB}"')

    def dsn(self, db: str = DB) -> str:
        return (f"host=127.0.0.1 port={self.port} user={ROLE} password={self.password} "
                f"dbname={db} connect_timeout=5")

    def _run(self, tool: str, *args) -> None:
        cmd = [*self.prefix, str(self.bin / tool), *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr}{proc.stdout}"
                               f"{log[-2000:]}")

    def start(self) -> None:
        """Start (again) on the same port and data; returns once it accepts connections."""
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=60")
        self._run("pg_ctl", "-D", self.data, "-l", self.logfile, "-o", options, "-w", "-t", "60",
                  "start")

    def stop(self) -> None:
        """Stop now (fast mode: every connection is cut, as in a crash or a failover)."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.folder, ignore_errors=True)
