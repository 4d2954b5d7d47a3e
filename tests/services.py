"""Real services for the scale tests, as context managers: a PostgreSQL server and an ``mlflow server``.

Both bind 127.0.0.1 on a free port, wait until they answer, and are stopped by PID on exit (nothing is
left running). PostgreSQL is the Debian package's (``/usr/lib/postgresql/<v>/bin`` or on PATH; ``.ci/run``
installs it); a test using it is skipped, with the reason, only when those binaries are absent.

    with postgres_server(tmp_path) as pg:
        pg.create_database("mlflow")
        with mlflow_server(pg.url("mlflow"), tmp_path / "artifacts", tmp_path) as uri:
            ...  # MLFLOW_TRACKING_URI=uri

PostgreSQL refuses to run as root: when the tests run as root, initdb / pg_ctl run as the ``postgres``
user (``runuser``) over a data dir in a fresh temp folder that user owns (pytest's own temp dirs are
private to root); otherwise they run as the current user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port

PG_USER = "postgres"  # the OS user the server runs as when we are root, and its superuser role


def postgres_bin_dir() -> Path | None:
    """The directory of ``initdb`` / ``pg_ctl`` / ``postgres``: the newest /usr/lib/postgresql/<v>/bin,
    else wherever PATH has them; None when PostgreSQL is not installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for cand in reversed(candidates):
        if all((Path(cand) / exe).exists() for exe in ("initdb", "pg_ctl", "postgres")):
            return Path(cand)
    found = [shutil.which(exe) for exe in ("initdb", "pg_ctl", "postgres")]
    if all(found):
        return Path(found[0]).resolve().parent  # type: ignore[arg-type]
    return None


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        pytest.skip(f"running as root and there is no {PG_USER!r} OS user to run PostgreSQL as")
    return ["runuser", "-u", PG_USER, "--", *cmd]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class PostgresServer:
    port: int
    pid: int
    data_dir: Path
    log_path: Path
    user: str = PG_USER
    host: str = "127.0.0.1"

    def url(self, dbname: str, driver: str = "postgresql+psycopg") -> str:
        """An SQLAlchemy URL (trust auth: no password), e.g. ``postgresql+psycopg://postgres@127.0.0.1:P/db``."""
        return f"{driver}://{self.user}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; returns its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


@contextlib.contextmanager
def postgres_server(tmp_dir: Path, timeout: float = 60.0) -> Iterator[PostgresServer]:
    """initdb + ``pg_ctl start`` on 127.0.0.1:<free port> (trust auth, fsync off: test data only);
    yields a :class:`PostgresServer`; on exit ``pg_ctl stop -m fast``, SIGKILL if it lingers, and the
    data dir is removed (its log is copied to ``tmp_dir/postgres.log`` first)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl/postgres in /usr/lib/postgresql/*/bin or "
                    "on PATH); `apt-get install postgresql` (.ci/run does)")
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="dlops-pg-"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        ids = pwd.getpwnam(PG_USER)
        os.chown(base, ids.pw_uid, ids.pw_gid)
    data, sock, log = base / "data", base / "sock", base / "postgres.log"
    pid = None
    try:
        subprocess.run(_as_pg_user(["mkdir", "-p", str(sock)]), check=True, cwd=base)
        subprocess.run(_as_pg_user([str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust",
                                    "--encoding=UTF8", "--locale=C", "--no-sync"]),
                       check=True, capture_output=True, timeout=120, cwd=base)
        last_err = ""
        for _attempt in range(3):  # the free port may be taken between picking it and binding it
            port = free_port()
            opts = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={sock} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
            proc = subprocess.run(_as_pg_user([str(bin_dir / "pg_ctl"), "start", "-w", "-t", str(int(timeout)),
                                               "-D", str(data), "-l", str(log), "-o", opts]),
                                  capture_output=True, text=True, timeout=timeout + 30, cwd=base)
            if proc.returncode == 0:
                break
            last_err = proc.stdout + proc.stderr + (log.read_text()[-3000:] if log.exists() else "")
        else:
            raise RuntimeError(f"PostgreSQL did not start:\n{last_err}")
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        server = PostgresServer(port=port, pid=pid, data_dir=data, log_path=tmp_dir / "postgres.log")
        _wait_pg(server, timeout)
        yield server
    finally:
        if pid is not None:
            subprocess.run(_as_pg_user([str(bin_dir / "pg_ctl"), "stop", "-m", "fast", "-w", "-t", "20",
                                        "-D", str(data)]), capture_output=True, timeout=60, cwd=base)
            deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # the postmaster; its children exit when it is gone
        if log.exists():
            with contextlib.suppress(OSError):
                shutil.copy(log, tmp_dir / "postgres.log")
        shutil.rmtree(base, ignore_errors=True)


def _wait_pg(server: PostgresServer, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(server.dsn(), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _mlflow_exe() -> str:
    exe = Path(sys.executable).parent / "mlflow"
    return str(exe) if exe.exists() else "mlflow"


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path, tmp_dir: Path, timeout: float = 180.0,
                  workers: int = 1, jobs: bool = False, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """``mlflow server`` (the venv's) over ``backend_uri`` with proxied artifact storage in ``artifacts_dir``
    (``--serve-artifacts --artifacts-destination``: clients upload/download through the server, new
    experiments get ``mlflow-artifacts:/`` locations) on 127.0.0.1:<free port>, in its own process
    group; yields ``http://127.0.0.1:<port>`` once ``/health`` answers, SIGTERM (then SIGKILL) to the
    group on exit. Its log: ``tmp_dir/mlflow-server.log`` (tail printed if it never gets ready).
    ``jobs``: also start MLflow's job runner (off: tracking and registry do not use it);
    ``extra_env``: more environment for the server (``MLFLOW_*`` of the caller are not inherited)."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_dir / "mlflow-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # No job runner: by default the server also starts ~8 Huey consumer processes (GenAI scoring, trace
    # archival) that the tracking API does not need: each imports mlflow (on 2 cores: a minute of
    # start-up) and they leave a store folder in /dev/shm behind.
    env.update(PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="true" if jobs else "false", **(extra_env or {}))
    cmd = [_mlflow_exe(), "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", artifacts_dir.resolve().as_uri(), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}/health not ready after {timeout} s")
            time.sleep(0.3)
    except BaseException:
        _stop_group(proc)
        print(log_path.read_text(errors="replace")[-5000:])
        raise
    try:
        yield url
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group led by ``proc`` (server + workers), SIGKILL what lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived the leader
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
