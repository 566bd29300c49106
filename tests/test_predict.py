"""The prediction server (``uvicorn server.predict:app``) in a real process, serving the prompt a real ``fedbpt
simulate`` run on the tiny model wrote: its answers are the in-process scores, and bad tokens, bodies and prompt
files are refused in the coordinator's error shape."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from conftest import tiny_backend
from serving import ROOT, free_port
from typer.testing import CliRunner

from fedbpt.data import Example
from fedbpt.job import LearnedPrompt, prompted_model
from fedbpt.models import load_backend

TOKEN = "test-predict-token-0123456789"
MAX_TEXTS, MAX_BODY_BYTES = 4, 2000
TEXTS = ["a gripping , beautiful film", "dull and far too long", "it 's a movie"]


def uvicorn_process(env: dict, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", "server.predict:app", "--host", "127.0.0.1", "--log-level", "warning"]
    return subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    """The prompt a short simulation on the tiny model (saved as a model folder) returns."""
    from clients.cli import app

    folder = tmp_path_factory.mktemp("serve")
    backend = tiny_backend()
    backend.model.save_pretrained(folder / "tiny-llama")
    backend.tokenizer.save_pretrained(folder / "tiny-llama")
    options = ["--model", str(folder / "tiny-llama"), "--dtype", "float32", "--threads", "1", "--starts", "preamble"]
    spec = ["--dim", "16", "--n-tokens", "3", "--parties", "2", "--rounds", "1", "--population", "3"]
    spec += ["--iterations", "2", "--examples-per-party", "4", "--eval-examples", "8", "--validation", "0"]
    result = CliRunner().invoke(app, ["simulate", *options, *spec, "--out", str(folder / "run.json")])
    assert result.exit_code == 0, result.output
    return folder / "run.prompt.json"


@pytest.fixture(scope="module")
def server(prompt_file):
    port = free_port()
    env = {"FEDBPT_PROMPT": str(prompt_file), "FEDBPT_PREDICT_TOKEN": TOKEN, "FEDBPT_DTYPE": "float32"}
    env |= {"FEDBPT_THREADS": "1", "FEDBPT_MAX_TEXTS": str(MAX_TEXTS), "FEDBPT_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    process = uvicorn_process(env, port)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the prediction server did not start in 60 s"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def post(server: str, body: object, token: str | None = TOKEN, **options) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server}/v1/predict", json=body, headers=headers, timeout=30, **options)


def test_predictions_are_the_calibrated_probabilities_of_the_prompt_in_process(server, prompt_file):
    answer = post(server, {"texts": TEXTS})
    assert answer.status_code == 200, answer.text
    learned = LearnedPrompt.load(prompt_file)
    backend = load_backend(learned.spec.model.name, dtype="float32", threads=1)
    prompted = prompted_model(learned.spec, backend).with_start(learned.start)
    expected = np.exp(prompted.scores(learned.z, prompted.encode([Example(text, 0) for text in TEXTS]))[0])
    labels = list(prompted.task.label_names)
    body = answer.json()
    assert (body["model"], body["task"], body["round"]) == (learned.spec.model.name, "sst2", learned.round)
    assert len(body["predictions"]) == len(TEXTS)
    for prediction, row in zip(body["predictions"], expected, strict=True):
        assert list(prediction["probabilities"]) == labels
        probabilities = np.array(list(prediction["probabilities"].values()))
        assert probabilities.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(probabilities, row, rtol=1e-4)
        assert prediction["index"] == row.argmax() and prediction["label"] == labels[row.argmax()]


def test_the_prompt_route_says_what_is_served(server, prompt_file):
    learned = LearnedPrompt.load(prompt_file)
    answer = httpx.get(f"{server}/v1/prompt", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.json() == {
        "task": "sst2",
        "labels": ["negative", "positive"],
        "model": learned.spec.model.name,
        "start": "preamble",
        "round": learned.round,
        "loss": pytest.approx(learned.loss),
        "job": "",
    }


@pytest.mark.parametrize("token, code", [(None, "missing_token"), ("wrong-token-0123456789", "bad_token")])
def test_a_missing_or_wrong_token_is_401(server, token, code):
    answer = post(server, {"texts": TEXTS}, token)
    assert answer.status_code == 401
    assert answer.json()["error"]["status"] == 401 and answer.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "body, says",
    [
        ({"texts": []}, "texts: List should have at least 1 item"),
        ({"texts": ["fine", 3]}, "texts.1: Input should be a valid string"),
        ({"texts": ["   "]}, "texts.0: String should have at least 1 character"),
        ({"texts": ["fine"] * (MAX_TEXTS + 1)}, f"texts: at most {MAX_TEXTS} texts per request"),
        ({"text": "fine"}, "texts: Field required"),
    ],
)
def test_a_bad_body_is_422_with_the_error_shape(server, body, says):
    answer = post(server, body)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["status"] == 422 and error["code"] == "invalid_request" and says in error["message"]


def test_a_body_over_the_limit_is_413(server):
    answer = post(server, {"texts": ["x" * MAX_BODY_BYTES]})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"


def test_a_missing_prompt_file_stops_the_server_at_startup_with_one_line(tmp_path):
    missing = tmp_path / "missing.prompt.json"
    process = uvicorn_process({"FEDBPT_PROMPT": str(missing), "FEDBPT_PREDICT_TOKEN": TOKEN}, free_port())
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if "error: " in line] == [
        f"ERROR:    error: cannot read {missing}: No such file or directory"
    ]


def test_fedbpt_serve_refuses_a_missing_prompt_file_before_loading_anything(tmp_path):
    from clients.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "missing.json"), "--token", TOKEN])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot read {tmp_path / 'missing.json'}: No such file or directory"
    ]
