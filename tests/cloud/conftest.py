"""Fixtures of the cloud tests: the KubeRay CRD schemas (shared material beside the corpora) and servers that each
test starts on 127.0.0.1 and stops by handle.

The CRDs come from FAIRRAY_KUBERAY, else the ``kuberay`` folder beside the corpora folder (FAIRRAY_CORPORA, default
../shared/corpora, so ../shared/kuberay). Absent, the tests that need them skip with a reason, unless
FAIRRAY_REQUIRE_CORPORA=1 (CI), where their absence is an error.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def kuberay_root() -> Path:
    if os.environ.get("FAIRRAY_KUBERAY"):
        return Path(os.environ["FAIRRAY_KUBERAY"]).resolve()
    corpora = Path(os.environ.get("FAIRRAY_CORPORA", REPO.parent / "shared" / "corpora")).resolve()
    return corpora.parent / "kuberay"


@pytest.fixture(scope="session")
def kuberay() -> Path:
    root = kuberay_root()
    if not (root / "ray.io_rayclusters.yaml").is_file():
        if os.environ.get("FAIRRAY_REQUIRE_CORPORA") == "1":
            pytest.fail(f"FAIRRAY_REQUIRE_CORPORA=1 but no KubeRay CRDs at {root} (set FAIRRAY_KUBERAY)")
        pytest.skip(f"KubeRay CRD schemas not found at {root}; set FAIRRAY_KUBERAY to run this test")
    return root


#: Credentials in the environment of the head, the driver and every trial: none may reach a store or a log.
SECRETS = {"AWS_SECRET_ACCESS_KEY": "fairray-test-secret-XYZ", "MLFLOW_TRACKING_PASSWORD": "fairray-test-pw-QRS"}
#: ... and the names a test greps for (the Ray token too).
SECRET_NAMES = (*SECRETS, "RAY_AUTH_TOKEN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path, timeout_s: float = 90) -> None:
    """Poll ``ready`` until it is true; fail with the end of the server's ``log`` when it exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} did not come up within {timeout_s:.0f} s: {log.read_text(errors='replace')[-3000:]}")


def http_ok(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen, timeout_s: float = 40) -> None:
    """Stop a server this test started with ``start_new_session=True``: SIGTERM to it (a ``ray start --block`` head
    drains and stops its own processes), then SIGKILL to whatever is left of its process group, and only of it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):  # ProcessLookupError: nothing of the group is left
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def head():
    """A one-node Ray cluster on loopback with token authentication, its dashboard and job API on 127.0.0.1:
    (job API URL, a job client, the environment a client on this machine needs: token and the test's secrets)."""
    temp = Path(tempfile.mkdtemp(prefix="fr-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    bin_dir = str(Path(sys.executable).parent)
    token = secrets.token_hex(16)
    env = {**os.environ, **SECRETS, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    ports = {flag: free_port() for flag in ("--port", "--dashboard-port", "--ray-client-server-port",
                                            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                            "--runtime-env-agent-port", "--metrics-export-port",
                                            "--node-manager-port", "--object-manager-port")}
    log = open(temp / "head.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(bin_dir) / "ray"), "start", "--head", "--block", "--num-cpus", "2",
                             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                             "--include-dashboard", "true", "--temp-dir", str(temp),
                             *[str(x) for kv in ports.items() for x in kv]],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **SECRETS}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in client_env.items():
                mp.setenv(k, v)
            from ray._raylet import AuthenticationTokenLoader
            from ray.job_submission import JobSubmissionClient

            # The token is cached per process: a local ray.init of an earlier test in this process left its own.
            AuthenticationTokenLoader.instance().reset_cache()

            def ready() -> bool:
                try:
                    JobSubmissionClient(url)
                    return True
                except (ConnectionError, RuntimeError):
                    return False

            wait_until(ready, proc, "ray head", temp / "head.log", timeout_s=120)
            yield url, JobSubmissionClient(url), client_env
        AuthenticationTokenLoader.instance().reset_cache()  # later tests of this process load their own again
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _require(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("FAIRRAY_REQUIRE_CORPORA") == "1":
            pytest.fail(f"FAIRRAY_REQUIRE_CORPORA=1 (CI) but {what}")
        pytest.skip(what)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL 15 server of this test (Debian's ``postgresql`` package) in a temp dir on 127.0.0.1, password
    authentication (scram-sha-256): (host, port, user, password). Run as the ``postgres`` account when this is root
    (PostgreSQL refuses root); stopped by handle (SIGINT: fast shutdown)."""
    _require((PG_BIN / "postgres").is_file(), f"no PostgreSQL at {PG_BIN} (apt-get install postgresql)")
    import psycopg2

    user = None
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        user = account.pw_name
    root = Path(tempfile.mkdtemp(prefix="fr-pg-", dir="/tmp"))
    password = secrets.token_hex(12)
    (root / "pw").write_text(password)
    if user:
        for p in (root, root / "pw"):
            os.chown(p, account.pw_uid, account.pw_gid)
    subprocess.run([str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "fairray", "-A", "scram-sha-256",
                    f"--pwfile={root / 'pw'}", "-E", "UTF8", "--no-sync"],
                   user=user, cwd=root, check=True, capture_output=True, timeout=120)
    (root / "pw").unlink()
    port = free_port()
    log = open(root / "postgres.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(PG_BIN / "postgres"), "-D", str(root / "data"), "-k", str(root), "-h", "127.0.0.1",
                             "-p", str(port), "-c", "fsync=off"], user=user, cwd=root, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def ready() -> bool:
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user="fairray", password=password, dbname="postgres").close()
            return True
        except psycopg2.OperationalError:
            return False

    try:
        wait_until(ready, proc, "postgres", root / "postgres.log", timeout_s=60)
        yield "127.0.0.1", port, "fairray", password
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: no waiting for clients
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 with one bucket: (endpoint URL, bucket, the client environment: dummy
    credentials and AWS_ENDPOINT_URL, which boto3 and pyarrow read)."""
    with moto_process() as (endpoint, env, _):
        yield endpoint, "fairray-test", env


@pytest.fixture(scope="module")
def mlflow_server(postgres, s3):
    """``mlflow server`` on 127.0.0.1 backed by the PostgreSQL of :func:`postgres`, artifacts proxied to the bucket of
    :func:`s3`; the database password reaches it through PGPASSWORD (libpq), the S3 keys through the environment,
    neither on its command line: (URL, the environment its clients need, the bucket)."""
    host, port, user, password = postgres
    endpoint, bucket, s3_env = s3
    import psycopg2

    conn = psycopg2.connect(host=host, port=port, user=user, password=password, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE mlflow")
    conn.close()
    root = Path(tempfile.mkdtemp(prefix="fr-mlflow-", dir="/tmp"))
    http_port = free_port()
    store = f"postgresql+psycopg2://{user}@{host}:{port}/mlflow"  # SQLAlchemy's default driver would be psycopg 3
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
           "--artifacts-destination", f"s3://{bucket}/mlflow", "--host", "127.0.0.1", "--port", str(http_port),
           "--workers", "1"]
    env = {**os.environ, **s3_env, "PGPASSWORD": password, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    log = open(root / "mlflow.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(lambda: http_ok(f"{url}/health"), proc, "mlflow server", root / "mlflow.log", timeout_s=180)
        assert password not in " ".join(cmd)
        yield url, s3_env, bucket
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_auth_server():
    """``mlflow server --app-name basic-auth`` (opt-in authentication) on 127.0.0.1 over a SQLite store: (URL, admin
    user, its password). The admin password reaches the server through MLFLOW_AUTH_ADMIN_PASSWORD on its first start,
    not through its command line or the config file."""
    root = Path(tempfile.mkdtemp(prefix="fr-mlauth-", dir="/tmp"))
    password = secrets.token_hex(12)
    (root / "auth.ini").write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root / 'auth.db'}\n"
                                   "admin_username = admin\n"
                                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri",
           f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(root / "auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}  # CSRF key of the auth app
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "mlflow.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/health"), proc, "mlflow server (basic auth)", root / "mlflow.log",
                   timeout_s=180)
        yield url, "admin", password
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


class Postgres:
    """A PostgreSQL 15 cluster of one test in a temp dir on 127.0.0.1, driven by ``pg_ctl`` so that a test can stop
    and start it again mid-sweep (same port, same data). Run as the ``postgres`` account when this is root."""

    def __init__(self, root: Path) -> None:
        _require((PG_BIN / "pg_ctl").is_file(), f"no PostgreSQL at {PG_BIN} (apt-get install postgresql)")
        self.root, self.port, self.password = root, free_port(), secrets.token_hex(12)
        self.account = None
        if os.geteuid() == 0:
            import pwd

            self.account = pwd.getpwnam("postgres")
            os.chown(root, self.account.pw_uid, self.account.pw_gid)
        pw = root / "pw"
        pw.write_text(self.password)
        if self.account:
            os.chown(pw, self.account.pw_uid, self.account.pw_gid)
        self._run("initdb", "-D", str(root / "data"), "-U", "fairray", "-A", "scram-sha-256", f"--pwfile={pw}",
                  "-E", "UTF8", "--no-sync")
        pw.unlink()

    def _run(self, exe: str, *args: str, timeout: float = 120) -> None:
        subprocess.run([str(PG_BIN / exe), *args], user=self.account.pw_name if self.account else None,
                       cwd=self.root, check=True, capture_output=True, timeout=timeout)

    def start(self) -> None:
        """Start and wait until it accepts connections (``pg_ctl start -w``)."""
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.root / "data"), "-l",
                  str(self.root / "postgres.log"), "-o",
                  f"-k {self.root} -h 127.0.0.1 -p {self.port} -c fsync=off")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop``: ``fast`` rolls back open transactions and drops every client connection."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.root / "data"))

    def running(self) -> bool:
        return (self.root / "data" / "postmaster.pid").exists()

    def connect(self, dbname: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user="fairray", password=self.password,
                                dbname=dbname)


@pytest.fixture
def restartable_postgres():
    """A :class:`Postgres` started for this test, with an empty ``mlflow`` database; stopped (immediate) after it."""
    root = Path(tempfile.mkdtemp(prefix="fr-pgr-", dir="/tmp"))
    pg = Postgres(root)
    pg.start()
    try:
        conn = pg.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield pg
    finally:
        if pg.running():
            with contextlib.suppress(subprocess.SubprocessError):
                pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server_process(store: str, artifacts: str, env: dict[str, str]):
    """``mlflow server`` on 127.0.0.1 over ``store`` with artifacts proxied to ``artifacts``, its secrets in ``env``
    (never on its command line), stopped by handle: yields (URL, process, log path)."""
    root = Path(tempfile.mkdtemp(prefix="fr-mlflow-", dir="/tmp"))
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--artifacts-destination",
           artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    full_env = {**os.environ, **env}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "mlflow.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=full_env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/health"), proc, "mlflow server", root / "mlflow.log", timeout_s=180)
        yield url, proc, root / "mlflow.log"
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def moto_process():
    """moto's S3 server on 127.0.0.1 with the bucket ``fairray-test``, stopped by handle (a test may kill it first):
    yields (endpoint URL, the client environment, process)."""
    exe = Path(sys.executable).parent / "moto_server"
    _require(exe.is_file(), "no moto_server (pip install 'moto[server]')")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "fairray-test-key", "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    root = Path(tempfile.mkdtemp(prefix="fr-s3-", dir="/tmp"))
    log = open(root / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], env={**os.environ, **env},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: http_ok(f"{endpoint}/moto-api/"), proc, "moto_server", root / "moto.log", timeout_s=60)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                     region_name="us-east-1").create_bucket(Bucket="fairray-test")
        yield endpoint, env, proc
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
