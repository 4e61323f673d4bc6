"""Nothing of a local Ray cluster outlives the sweep that started it.

``ray.init()`` ties its GCS server and raylet to the driver (the kernel kills them when the driver dies), but the
raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) are not tied: after a SIGKILL of the driver they
notice the raylet is gone, try to report it to the GCS that died with it, and hang there for good. This watchdog,
started by the driver right after ``ray.init()`` in a session of its own (a kill of the driver's process group spares
it), follows the processes ``ray.init()`` started and everything they start; when the driver is gone it SIGKILLs
whatever of them is left, then exits. Processes are told apart by pid and start time, so a reused pid is never hit.

Run as ``python -m fairray.sweep._reaper DRIVER_PID ROOT_PID...``.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.2


def start(driver_pid: int, roots: list[int]) -> subprocess.Popen | None:
    """The watchdog of ``roots`` (processes the driver started), or None when there are none."""
    if not roots:
        return None
    return subprocess.Popen([sys.executable, "-m", "fairray.sweep._reaper", str(driver_pid), *map(str, roots)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _identity(proc: psutil.Process) -> tuple[int, float] | None:
    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return None


def _alive(known: dict[int, float]) -> list[psutil.Process]:
    out = []
    for pid, created in known.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out


def _follow(known: dict[int, float]) -> list[psutil.Process]:
    """Add the current descendants of the known processes to ``known``; the known ones still alive."""
    alive = _alive(known)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                ident = _identity(child)
                if ident is not None:
                    known.setdefault(*ident)
    return _alive(known)


def main(driver_pid: int, roots: list[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the driver, which stops its cluster itself
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the driver's end is this process's cue, not a signal
    known: dict[int, float] = {}
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            ident = _identity(psutil.Process(pid))
            if ident is not None:
                known.setdefault(*ident)
    driver = _identity(psutil.Process(driver_pid)) if psutil.pid_exists(driver_pid) else None
    while driver is not None and _alive({driver[0]: driver[1]}):
        if not _follow(known):  # the driver shut its cluster down: nothing left to watch
            return
        time.sleep(POLL_S)
    for _ in range(3):  # what the dying processes start in their last moments is caught on the next pass
        left = _follow(known)
        if not left:
            return
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=5)


if __name__ == "__main__":
    main(int(sys.argv[1]), [int(x) for x in sys.argv[2:]])
