"""``fairray submit``: run ``fairray sweep`` on a Ray cluster through the cluster's job API.

The spec is validated here first (a bad spec fails on your machine, not on the cluster). The working folder,
which must hold the spec, is shipped as the job's runtime environment (``working_dir``); the job's entrypoint is
``fairray sweep <spec> --address auto`` with the same options, run by the head's job supervisor. The job's logs are
followed until it ends and its driver's exit code becomes this command's; Ctrl-C stops the job (the sweep gets
SIGINT, so it stops as it does locally: finished trials kept, runs marked KILLED, ``--resume`` continues it).

Needs Ray's job client (``pip install 'fairray[cluster]'``). With token authentication on the cluster, the token
comes from Ray's own settings (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, with
``RAY_AUTH_MODE=token``), never from an option of this command.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import urlparse

from fairray.errors import ConfigError, FairrayError

#: Never shipped to the cluster: local runs and stores, environments, build output, VCS data (Ray also honours
#: the folder's .gitignore).
EXCLUDES = [".git", ".venv", ".venv-*", "fairray_runs", "mlruns", "mlartifacts", "pareto", "dist", "build",
            "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "*.db"]
#: Ctrl-C on this side stops the job with SIGINT, which a sweep handles like a local Ctrl-C, and gives it this long
#: to save its state and close its MLflow runs before the job supervisor kills it.
STOP_WAIT_S = 60
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class Submission:
    job_id: str
    address: str
    entrypoint: str
    working_dir: Path


def _job_client(address: str):
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # pragma: no cover - ray[default] is in the test extra
        raise FairrayError(f"fairray submit needs Ray's job client ({exc}); pip install 'fairray[cluster]'") from None
    try:
        return JobSubmissionClient(address)
    except ConnectionError:
        raise FairrayError(f"--address {address}: no Ray job API answers there; is the cluster up, and the "
                           "dashboard port (8265) forwarded (`ray dashboard CLUSTER.yaml`, `kubectl port-forward`)?"
                           ) from None
    except Exception as exc:  # AuthenticationError, version mismatch: Ray's message, first line
        raise FairrayError(f"--address {address}: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from None


def check_address(address: str | None) -> str:
    """The job API's HTTP address: ``--address`` or ``$RAY_API_SERVER_ADDRESS`` (Ray's own setting)."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        raise ConfigError("--address: the cluster's job API, e.g. --address http://127.0.0.1:8265 (the dashboard "
                          "port, forwarded to your machine), or set RAY_API_SERVER_ADDRESS")
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"--address {address!r}: expected the job API's HTTP address, e.g. http://127.0.0.1:8265 "
                          "(ray:// and GCS addresses are for `fairray sweep --address`)")
    return address.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sweep_entrypoint(spec: str, overrides: Sequence[str] = (), *, num_samples: int | None = None,
                     ablation: str | None = None, resume: bool = False, quiet: bool = False) -> str:
    """The shell command the job runs on the head: ``fairray sweep`` joining the cluster it runs on."""
    args = ["fairray", "sweep", spec, "--address", "auto"]
    for text in overrides:
        args += ["--set", text]
    if num_samples is not None:
        args += ["--num-samples", str(num_samples)]
    if ablation:
        args += ["--ablation", ablation]
    if resume:
        args.append("--resume")
    if quiet:
        args.append("--quiet")
    return shlex.join(args)


def submit(spec: str | Path, address: str | None, overrides: Sequence[str] = (), *,
           working_dir: str | Path | None = None, num_samples: int | None = None, ablation: str | None = None,
           resume: bool = False, quiet: bool = False) -> Submission:
    """Validate ``spec`` here, then submit its sweep as a Ray job with ``working_dir`` (default: the current folder,
    which must hold the spec) as the job's working directory."""
    from fairray.config import load_spec

    address = check_address(address)
    spec_path = Path(spec).resolve()
    if not spec_path.is_file():
        raise ConfigError(f"{spec}: no such spec file")
    all_overrides = list(overrides) + ([f"budget.num_samples={num_samples}"] if num_samples is not None else [])
    loaded = load_spec(spec, all_overrides)  # ConfigError (exit 2) before anything reaches the cluster
    wd = Path(working_dir or Path.cwd()).resolve()
    if not wd.is_dir():
        raise ConfigError(f"--working-dir {working_dir}: no such folder")
    if not spec_path.is_relative_to(wd):
        raise ConfigError(f"{spec}: the spec lies outside the working folder {wd} that is shipped to the cluster; "
                          "run from a folder that holds it or pass --working-dir")
    host = urlparse(address).hostname or ""
    if urlparse(address).scheme == "http" and not _is_loopback(host):
        print(f"fairray: warning: the job (and any Ray token) goes unencrypted to {host}; prefer a tunnel to "
              "127.0.0.1 (`ray dashboard CLUSTER.yaml`, `kubectl port-forward`) or https", file=sys.stderr)
    entrypoint = sweep_entrypoint(spec_path.relative_to(wd).as_posix(), overrides, num_samples=num_samples,
                                  ablation=ablation, resume=resume, quiet=quiet)
    client = _job_client(address)
    job_id = f"fairray-{loaded.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    runtime_env = {"working_dir": str(wd), "excludes": EXCLUDES,
                   "env_vars": {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}}
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env,
                          metadata={"fairray.sweep": loaded.spec.name, "fairray.spec": spec_path.name})
    except Exception as exc:  # the job API's refusal (package too large, bad runtime env): its first line
        raise FairrayError(f"{address}: the job was not accepted: {str(exc).strip().splitlines()[0]}") from None
    return Submission(job_id, address, entrypoint, wd)


def _wait_terminal(client, job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = str(client.get_job_status(job_id))
    while status.rsplit(".", 1)[-1] not in _TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
        status = str(client.get_job_status(job_id))
    return status.rsplit(".", 1)[-1]


def follow(submission: Submission, out: TextIO | None = None) -> int:
    """Stream the job's logs to ``out`` until it ends; its exit code (130 when stopped). Ctrl-C stops the job."""
    out = out or sys.stdout
    client = _job_client(submission.address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission.job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"fairray: stopping job {submission.job_id} (the sweep saves its state; `--resume` continues it)",
              file=sys.stderr)
        client.stop_job(submission.job_id)
        status = _wait_terminal(client, submission.job_id, STOP_WAIT_S + 30)
        print(f"fairray: job {submission.job_id} {status}", file=sys.stderr)
        return 130
    except RuntimeError:  # the log stream broke off (head restarted, tunnel closed): the status still tells
        pass
    status = _wait_terminal(client, submission.job_id, 30)
    info = client.get_job_info(submission.job_id)
    code = info.driver_exit_code
    if status == "SUCCEEDED":
        return 0 if code is None else code
    if status == "STOPPED":
        print(f"fairray: job {submission.job_id} was stopped", file=sys.stderr)
        return 130
    reason = (info.message or "").strip().splitlines()
    print(f"fairray: job {submission.job_id} {status}" + (f": {reason[-1]}" if reason else ""), file=sys.stderr)
    return code if code else 1
