"""Starting the sweep's backends."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlattr.sweep.backends import ray_available


@pytest.mark.skipif(not ray_available(), reason="Ray is the optional extra 'sweep'")
def test_the_local_ray_starts_without_the_token_notice() -> None:
    # In a fresh process: Ray prints its notice once per process, at the first start.
    script = (
        "from rlattr.sweep.backends import init_ray\n"
        "import ray\n"
        "init_ray(workers=1)\n"
        "print('started', ray.is_initialized())\n"
        "ray.shutdown()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert "started True" in done.stdout
    assert "Token authentication" not in done.stderr + done.stdout
