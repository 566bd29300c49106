"""``fedbpt local``: a real server and real client processes on 127.0.0.1, on the tiny model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

from serving import FEDBPT

from fedbpt.job import LearnedPrompt

SMALL = ["--parties", "2", "--rounds", "1", "--examples-per-party", "4", "--population", "2", "--iterations", "1"]


def local_command(model, out) -> list[str]:
    return [
        FEDBPT,
        "local",
        "--model",
        str(model),
        "--dtype",
        "float32",
        *SMALL,
        "--eval-examples",
        "8",
        "--out",
        str(out),
    ]


def test_local_runs_a_federation_and_returns_its_prompt(tmp_path, tiny_model_dir):
    out = tmp_path / "local"
    result = subprocess.run(local_command(tiny_model_dir, out), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("party-0: ") for line in lines) and any(line.startswith("party-1: ") for line in lines)
    assert any("round   1  search  pooled loss" in line for line in lines)
    prompt = LearnedPrompt.load(out / "prompt.json")
    dashboard = re.compile(rf"dashboard: http://127\.0\.0\.1:\d+/dashboard#{prompt.job} \(viewer token: ")
    assert any(dashboard.match(line) for line in lines)
    assert prompt.spec.federation.parties == 2 and prompt.job
    events = [json.loads(line) for line in (out / "events" / f"{prompt.job}.events.jsonl").open()]
    assert events[0]["event"] == "job_created" and events[-1] == {
        **events[-1],
        "event": "job_ended",
        "status": "finished",
    }
    assert (out / "party-0.log").read_text() and (out / "server.log").exists()


def children(pid: int) -> list[int]:
    listed = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in listed.stdout.split()]


def test_ctrl_c_stops_the_server_and_every_party(tmp_path, tiny_model_dir):
    out = tmp_path / "local"
    command = local_command(tiny_model_dir, out)
    command[command.index("--rounds") + 1] = "50"
    local = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in local.stdout:  # wait until the parties are at work
        if "round 0 (start)" in line:
            break
    started = children(local.pid)
    assert len(started) == 3  # the server and two parties
    local.send_signal(signal.SIGINT)
    rest = local.communicate(timeout=60)[0]
    assert local.returncode == 130, rest
    assert "interrupted: stopping the server and 2 parties" in rest
    time.sleep(0.5)
    for pid in started:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
