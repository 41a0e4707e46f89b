"""Screenshots of rlattr's TensorBoard dashboards, taken with headless Chromium.

Starts TensorBoard on 127.0.0.1 over a run's ``tb/`` folder and saves one PNG per
dashboard (custom scalars, scalars, images, text, hparams) under
experiments/results/tensorboard/. Needs Debian's ``chromium`` (``apt-get install
chromium``); nothing leaves the machine (Chromium's background networking is off).

    python experiments/tensorboard_screenshots.py runs/demo/iif
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import GIT_AT_START, RESULTS, describe_git

DASHBOARDS = ("custom_scalars", "scalars", "images", "text", "hparams")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1500,1100", "--virtual-time-budget=15000",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path, help="a TensorBoard log directory (e.g. RUN/tb)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tensorboard")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: needs Chromium: apt-get install chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir), "--host",
         "127.0.0.1", "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/data/runs")
        time.sleep(3)  # TensorBoard reads the event files in the background
        for dashboard in DASHBOARDS:
            target = args.out / f"{dashboard}.png"
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run(
                    [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                     f"--screenshot={target}", f"{base}/?darkMode=false#{dashboard}"],
                    check=True, capture_output=True, timeout=120,
                )  # fmt: skip
            print(f"wrote {target}")
    finally:
        server.terminate()
        server.wait(timeout=20)
    (args.out / "README.md").write_text(
        "# TensorBoard screenshots\n\n"
        f"`python experiments/tensorboard_screenshots.py {args.logdir}` (headless Chromium, "
        f"TensorBoard on 127.0.0.1); code {describe_git(GIT_AT_START)}.\n"
    )


if __name__ == "__main__":
    main()
