"""A throwaway PostgreSQL cluster for the tests, `make cluster` and the benchmarks.

Debian's server binaries (`apt-get install postgresql`: /usr/lib/postgresql/<n>/bin),
a fresh data directory in a temporary folder, listening on a Unix socket there only
(no TCP port, so parallel runs never collide). initdb refuses to run as root: as root
the cluster runs as the `postgres` user (runuser), as anyone else as that user.

When it cannot start, `PgClusterError` says why in one line: the tests fail with it
rather than skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

PORT = 5432  # only names the socket file, inside our own folder
HINT = "install Debian's server with `apt-get install -y postgresql` (as root)"


class PgClusterError(RuntimeError):
    pass


def server_bin() -> Path:
    """The newest installed server's bin directory."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        raise PgClusterError(f"PostgreSQL server binaries not found under "
                             f"/usr/lib/postgresql; {HINT}")
    return found[-1].parent


def _reachable_tmp() -> str:
    """A temporary folder every user can pass through: the cluster's server runs as
    `postgres` (on some machines /tmp is root's alone)."""
    for candidate in (tempfile.gettempdir(), "/var/tmp", "/dev/shm"):
        path = Path(candidate).resolve()
        if path.is_dir() and all(p.stat().st_mode & 0o001 for p in (path, *path.parents)):
            return str(path)
    raise PgClusterError("no temporary folder that the postgres user can reach "
                         "(/tmp, /var/tmp and /dev/shm are closed to it)")


class PgCluster:
    """initdb + pg_ctl in `root` (a new temporary folder when None)."""

    def __init__(self, root: Path | None = None, *, durable: bool = False,
                 max_connections: int = 300, settings: tuple[str, ...] = ()) -> None:
        self.bin = server_bin()
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="broker-pg-", dir=_reachable_tmp()))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.log = self.root / "server.log"
        self.durable = durable
        self.max_connections = max_connections
        self.settings = settings  # more postgresql.conf lines (the benchmarks')
        self._as_postgres = os.geteuid() == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={PORT}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PgClusterError(f"{argv[0]} failed: {error}") from None
        if check and done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PgClusterError(f"{argv[0]} failed ({done.returncode}): {' | '.join(tail)}")
        return done

    def start(self) -> PgCluster:
        if self._as_postgres:
            # The postgres user must be able to reach and own its folder.
            self.root.chmod(0o755)
            shutil.chown(self.root, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
            settings = [
                "listen_addresses = ''",
                f"unix_socket_directories = '{self.socket_dir}'",
                f"port = {PORT}",
                f"max_connections = {self.max_connections}",
                "shared_buffers = 128MB",
                "max_pred_locks_per_transaction = 256",
                # SERIALIZABLE: a transaction's read locks on more than this many rows
                # of one heap page become a lock on the whole page (default 2). An
                # authorization reads its wallet's four spend counters, which share a
                # page with other wallets' counters: promoted, unrelated wallets
                # conflicted on 0.72 of authorizations, at 32 on 0.02; brokers sweeping
                # different due rows of one page conflicted too (docs/scale-out.md).
                "max_pred_locks_per_page = 64",
            ]
            if not self.durable:  # tests: nothing here must survive a power cut
                settings += ["fsync = off", "full_page_writes = off"]
            settings += self.settings
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write("\n".join(settings) + "\n")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of `template` when given); its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            query = f'CREATE DATABASE "{name}"'
            if template:
                query += f' TEMPLATE "{template}" STRATEGY FILE_COPY'
            conn.execute(query)
        return self.url(name)


# -- one cluster per test session ------------------------------------------------------

_shared: PgCluster | None = None
_databases = 0
TEMPLATE = "broker_template"


def shared() -> PgCluster:
    """The test session's cluster, started on first use (stopped at exit), with a
    template database that holds the broker's tables."""
    global _shared
    if _shared is None:
        import atexit

        from broker.store.pg_store import PgStore

        cluster = PgCluster().start()
        atexit.register(cluster.destroy)
        url = cluster.create_database(TEMPLATE)
        PgStore(url, create=True).close()
        _shared = cluster
    return _shared


def fresh_database() -> str:
    """The URL of an empty database with the broker's tables: one given back with
    `recycle` and emptied (creating a database costs most of a second), or a new one."""
    global _databases
    cluster = shared()
    while _recycled:
        url = _recycled.pop()
        try:
            _empty(url)
            return url
        except psycopg.Error:  # a test left it unusable: take another
            continue
    _databases += 1
    return cluster.create_database(f"t{os.getpid()}_{_databases}", template=TEMPLATE)


def recycle(url: str) -> None:
    """Give back a database from `fresh_database` (its stores closed)."""
    _recycled.append(url)


_recycled: list[str] = []


def _empty(url: str) -> None:
    from broker.store import TABLES, pg_shared
    from broker.store.pg_store import LAYOUT_VERSION, layout_ddl, sql_table

    statements = [*layout_ddl(), "DELETE FROM id_slots", "DELETE FROM broker_layout",
                  f"INSERT INTO broker_layout VALUES ({LAYOUT_VERSION})",
                  *(f"DELETE FROM {sql_table(t)}" for t in TABLES),
                  *(f"DELETE FROM {t}" for t in pg_shared.TABLES)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(";".join(statements))
