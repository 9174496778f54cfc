"""``video.mp4`` bytes depend only on the frames, not on the machine's CPU count.

x264 picks its thread count from the CPUs a process may use, and its output depends on it;
the writer pins one thread. Two processes, one allowed a single CPU, must write equal bytes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WRITE = """
import os, sys
import numpy as np
from lrag.data.video import VideoWriter
if sys.argv[2] != "all":
    os.sched_setaffinity(0, {int(sys.argv[2])})
frames = np.random.default_rng(0).integers(0, 255, (12, 256, 256, 3), dtype=np.uint8)
writer = VideoWriter(sys.argv[1])
writer.write(frames[:5])
writer.write(frames[5:])
writer.close()
"""


def _write(path: Path, cpus: str) -> str:
    subprocess.run([sys.executable, "-c", WRITE, str(path), cpus], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to vary x264's threads")
def test_video_bytes_do_not_depend_on_the_cpu_count(tmp_path):
    one_cpu = _write(tmp_path / "one.mp4", str(min(os.sched_getaffinity(0))))
    all_cpus = _write(tmp_path / "all.mp4", "all")
    assert one_cpu == all_cpus
