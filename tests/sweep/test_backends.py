"""Starting the sweep's backends."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

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


# A driver that starts the default local Ray, runs one task (so that a worker listens too)
# and holds Ray up until its stdin closes.
HOLD_RAY = """
import sys
import ray
from rlattr.sweep.backends import init_ray
init_ray(workers=1)
print("task in", ray.get(ray.remote(lambda: __import__("os").getpid()).remote()), flush=True)
sys.stdin.read()
ray.shutdown()
"""


def _tree(root: int) -> set[int]:
    """``root`` and every process below it (from /proc's parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def _address(field: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address of a /proc/net/tcp{,6} ``HEX:PORT`` field (32-bit words in host order)."""
    raw = bytes.fromhex(field.split(":")[0])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listening_sockets(pids: set[int]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket in LISTEN that ``pids`` hold."""
    owners: dict[str, str] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[target[8:-1]] = name
        except OSError:
            continue  # the process ended meanwhile
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owners:  # 0A: LISTEN
                port = int(fields[1].split(":")[1], 16)
                found.append((str(_address(fields[1])), port, owners[fields[9]]))
    return found


def _loopback(text: str) -> bool:
    address = ipaddress.ip_address(text)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 in tcp6
    return (mapped or address).is_loopback


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
@pytest.mark.skipif(not ray_available(), reason="Ray is the optional extra 'sweep'")
def test_the_local_ray_listens_on_loopback_only() -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", HOLD_RAY],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert driver.stdout is not None and driver.stdin is not None
        started = driver.stdout.readline()  # the task ran: GCS, raylet and a worker are up
        assert started.startswith("task in"), driver.stderr.read() if driver.stderr else ""
        sockets = listening_sockets(_tree(driver.pid))
        driver.stdin.close()
        driver.wait(timeout=60)
    finally:
        driver.kill()
        driver.wait()
    names = {name for _, _, name in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the servers were seen listening
    exposed = [s for s in sockets if not _loopback(s[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"
