"""Seen in a real TensorBoard: a server on 127.0.0.1 serves what the board wrote.

A tiny IIF run is trained, ``tensorboard`` is started on a free loopback port over its
run directory, and the HTTP data API (what the dashboard's pages read) is asked for the
scalars, histograms, images, text, hparams and the custom-scalars layout.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from rlattr import IIF, AttributedPPO
from rlattr.training.board import BoardConfig


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(base: str, path: str, payload: dict | None = None) -> object:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(base + path, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, n_steps=128, batch_size=64, n_epochs=1,
        seed=0, device="cpu", iif=IIF(fraction=0.5), board=BoardConfig(details_every=1),
    ).learn(256)  # fmt: skip
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir / "tb"),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                runs = _get(base, "/data/runs")
                if runs and _get(base, "/data/plugin/scalars/tags"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("tensorboard did not come up on 127.0.0.1")
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def _tags(base: str, plugin: str) -> set[str]:
    return {tag for tags in _get(base, f"/data/plugin/{plugin}/tags").values() for tag in tags}


def test_scalars_histograms_images_and_text_are_served(server: str) -> None:
    scalars = _tags(server, "scalars")
    for tag in (
        "rollout/ep_rew_mean", "scores/p50_normalized", "scores/fraction_negative",
        "filter/fraction_dropped", "diagnosis/known_fraction", "time/update_s",
    ):  # fmt: skip
        assert tag in scalars, tag
    assert "scores/normalized" in _tags(server, "histograms")
    assert "records/score_vs_advantage" in _tags(server, "images")
    assert "records/most_harmful_and_helpful/text_summary" in _tags(server, "text")
    [run] = _get(server, "/data/runs")
    points = _get(server, f"/data/plugin/scalars/scalars?run={run}&tag=time/update_s")
    assert [step for _, step, _ in points] == [128, 256]


def test_hparams_and_custom_scalar_layout_are_served(server: str) -> None:
    experiment = _get(server, "/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"seed", "iif.rule", "iif.fraction"} <= names
    layout = _get(server, "/data/plugin/custom_scalars/layout")
    titles = {chart["title"] for category in layout["category"] for chart in category["chart"]}
    assert "learning curve" in titles
