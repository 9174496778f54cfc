"""RunLease between real processes: a live holder refuses, a killed one is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrag.runs.lease import LeaseHeldError, RunLease

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from lrag.runs.lease import RunLease
lease = RunLease(sys.argv[1], "r-0")
lease.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_refuses_and_a_killed_one_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(LeaseHeldError, match=rf"pid {proc.pid} on this host"):
            RunLease(tmp_path, "r-0").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunLease(tmp_path, "r-0") as lease:
        assert lease.holder()["pid"] == os.getpid()
    assert not (tmp_path / "lease.json").exists()


def test_a_killed_holder_not_yet_reaped_holds_no_lease(tmp_path):
    # Killed but not waited for: a zombie keeps its pid (kill(pid, 0) succeeds) but writes nothing.
    proc = _holder(tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)
        state = ""
        for _ in range(500):  # until the kernel has turned it into a zombie
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
            time.sleep(0.01)
        assert state == "Z"
        with RunLease(tmp_path, "r-0") as lease:
            assert lease.holder()["pid"] == os.getpid()
    finally:
        proc.wait()


def test_a_lease_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / "lease.json").write_text('{"host": "elsewhere", "pid": 1, "started": "t"}')
    with pytest.raises(LeaseHeldError, match="pid 1 on host elsewhere.*delete the lease file"):
        RunLease(tmp_path, "r-0").acquire()
    assert (tmp_path / "lease.json").exists()


def test_a_reused_pid_does_not_keep_a_stale_lease(tmp_path):
    # Our own pid with another process start time: the recorded process is gone.
    (tmp_path / "lease.json").write_text(
        f'{{"host": "{os.uname().nodename}", "pid": {os.getpid()}, "proc_start": "1", "started": "t"}}')
    with RunLease(tmp_path, "r-0") as lease:
        assert lease.holder()["proc_start"] != "1"


def test_release_leaves_a_lease_taken_over_by_another_process_alone(tmp_path):
    lease = RunLease(tmp_path, "r-0")
    lease.acquire()
    (tmp_path / "lease.json").write_text('{"host": "x", "pid": 2}')
    lease.release()
    assert (tmp_path / "lease.json").exists()
