"""The command line where it needs no model: specs from flags and files, and refusals with one-line errors."""

import importlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from serving import ADMIN_TOKEN, FEDBPT, ServerProcess
from typer.testing import CliRunner

from fedbpt.job import LearnedPrompt
from fedbpt.options import settings
from fedbpt.protocol import decode_vector
from fedbpt.spec import JobSpec, from_dict, load, to_toml


def test_the_cli_module_imports_with_every_spec_flag():
    # A command's own option must not share a name with a spec flag: compare's --learning-rate (FedPrompt's Adam
    # step) once clashed with search.learning_rate and `import fedbpt.cli` failed.
    cli = importlib.import_module("fedbpt.cli")
    assert {command.name or command.callback.__name__ for command in cli.app.registered_commands} >= {
        "simulate",
        "compare",
        "predict",
        "evaluate",
    }


def invoke(*arguments: str):
    from fedbpt.cli import app

    return CliRunner().invoke(app, list(arguments))


def shown_spec(tmp_path, *arguments: str) -> JobSpec:
    """The spec ``fedbpt config show`` prints, read back with ``fedbpt.spec.load``."""
    result = invoke("config", "show", *arguments)
    assert result.exit_code == 0, result.output
    path = tmp_path / "shown.toml"
    path.write_text(result.stdout)
    return load(path)


def one_line_error(result) -> str:
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_config_show_prints_the_default_spec_as_toml(tmp_path):
    assert shown_spec(tmp_path) == JobSpec()


def test_config_show_applies_every_kind_of_flag(tmp_path):
    spec = shown_spec(
        tmp_path,
        *("--population", "9", "--step", "0.3", "--no-calibrate", "--starts", "instruction, vocabulary"),
        *("--search", "zo-sgd", "--model", "smollm2-135m:q4_0", "--job-name", "mine", "--wire", "float32"),
    )
    assert spec.search.population == 9 and spec.search.step == 0.3 and spec.search.method == "zo-sgd"
    assert spec.prompt.calibrate is False and spec.prompt.starts == ("instruction", "vocabulary")
    assert spec.model.name == "smollm2-135m:q4_0" and spec.name == "mine" and spec.wire == "float32"


def test_flags_override_a_config_file(tmp_path):
    config = tmp_path / "job.toml"
    config.write_text(to_toml(from_dict({"seed": 3, "search": {"population": 7, "iterations": 2}})))
    spec = shown_spec(tmp_path, "--config", str(config), "--population", "9")
    assert spec.search.population == 9  # the flag
    assert spec.seed == 3 and spec.search.iterations == 2  # the file
    assert spec.federation == JobSpec().federation  # the defaults


def test_a_json_config_file_is_read_too(tmp_path):
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"federation": {"rounds": 2}}))
    assert shown_spec(tmp_path, "--config", str(config)).federation.rounds == 2


def test_every_setting_but_the_pinned_ones_has_a_flag():
    paths = {setting.path for setting in settings()}
    assert {"search.population", "prompt.starts", "federation.ranking", "data.alpha", "seed", "wire"} <= paths
    assert not paths & {"model.identity", "model.hidden_size", "prompt.scale", "prompt.fingerprint"}
    help_text = invoke("config", "show", "--help").stdout
    for flag in ("--perturb-rate", "--step-floor", "--backtrack", "--parties-per-round", "--examples-per-party"):
        assert flag in help_text


@pytest.mark.parametrize(
    "arguments, key",
    [
        (["--population", "1"], "search.population"),
        (["--perturb-rate", "1"], "search.perturb_rate"),
        (["--ranking", "loss"], "federation.ranking"),
        (["--starts", "preamble,nope"], "starts must be distinct names"),
        (["--parties", "3", "--parties-per-round", "4"], "parties_per_round (4) cannot exceed parties (3)"),
        (["--task", "sst3"], "unknown task 'sst3'"),
    ],
)
def test_a_bad_flag_value_exits_2_with_a_one_line_error_naming_the_key(arguments, key):
    assert key in one_line_error(invoke("config", "show", *arguments))


def test_a_missing_config_file_exits_2_with_a_one_line_error(tmp_path):
    assert "cannot read" in one_line_error(invoke("config", "show", "--config", str(tmp_path / "missing.toml")))


def test_a_config_file_with_an_unknown_key_exits_2_naming_it(tmp_path):
    config = tmp_path / "job.toml"
    config.write_text("[search]\npopulaton = 5\n")
    assert "search.populaton: unknown key" in one_line_error(invoke("config", "show", "--config", str(config)))


def test_simulate_refuses_a_bad_spec_before_loading_a_model(tmp_path):
    out = tmp_path / "run.json"
    assert "search.step" in one_line_error(invoke("simulate", "--step", "0", "--out", str(out)))
    assert not out.exists()


def test_compare_refuses_unknown_methods_before_loading_a_model(tmp_path):
    error = one_line_error(invoke("compare", "--methods", "fedbpt,fedsgd", "--out", str(tmp_path / "cmp")))
    assert "unknown methods ['fedsgd']" in error
    assert not (tmp_path / "cmp").exists()


def not_prompt_files(tmp_path) -> dict:
    wrong_shape = LearnedPrompt(from_dict({"prompt": {"dim": 8}}), "preamble", np.zeros(5), 1, 0.5).to_dict()
    files = {
        "a results file": {"spec": {}, "rounds": []},
        "a list": [1, 2],
        "a bad spec": {"start": "preamble", "z": [0.0], "spec": {"seed": -1}},
        "a z of the wrong length": wrong_shape,
        "a start the spec does not offer": {**wrong_shape, "z": [0.0] * 8, "start": "nope"},
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name.replace(' ', '-')}.json"
        paths[name].write_text(json.dumps(content))
    (tmp_path / "text.json").write_text("not json")
    return {**paths, "not JSON": tmp_path / "text.json", "a missing file": tmp_path / "missing.json"}


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "a fine film"]], ids=["evaluate", "predict"])
def test_evaluate_and_predict_refuse_a_file_that_is_not_a_prompt_file(tmp_path, command):
    for name, path in not_prompt_files(tmp_path).items():
        error = one_line_error(invoke(*command, "--prompt", str(path)))
        assert str(path) in error, name


def test_a_prompt_file_round_trips(tmp_path):
    spec = from_dict({"prompt": {"dim": 8, "starts": ["instruction", "vocabulary"]}, "seed": 5})
    prompt = LearnedPrompt(spec, "vocabulary", np.arange(8) / 8, 3, 0.25, job="abc")
    prompt.save(tmp_path / "prompts" / "p.json")
    again = LearnedPrompt.load(tmp_path / "prompts" / "p.json")
    assert (again.spec, again.start, again.round, again.loss, again.job) == (spec, "vocabulary", 3, 0.25, "abc")
    np.testing.assert_array_equal(again.z, prompt.z)


def run_fedbpt(*arguments: str, cwd=None) -> subprocess.CompletedProcess:
    """The installed ``fedbpt`` console script in a real process, as a user runs it."""
    return subprocess.run([FEDBPT, *arguments], capture_output=True, text=True, cwd=cwd, timeout=120)


def new_user_mistakes(tmp_path) -> dict:
    (tmp_path / "broken.json").write_text('{"name": broken')
    (tmp_path / "task.yaml").write_text("name: reviews\n")
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    down = "http://127.0.0.1:9"
    return {
        ("simulate", "--task", "sst-2"): "error: task: unknown task 'sst-2': use one of "
        "['sst2', 'agnews', 'yelp2', 'dbpedia'] or a task file",
        ("simulate", "--model", "missing.gguf"): "error: GGUF file missing.gguf does not exist: give the path of a "
        ".gguf file or a packaged model name",
        ("simulate", "--rounds", "0"): "error: federation.rounds: Input should be greater than or equal to 1",
        ("simulate", "--task", "broken.json"): "error: task file broken.json cannot be parsed: Expecting value: "
        "line 1 column 10 (char 9)",
        ("simulate", "--task", "task.yaml"): "error: task: task file task.yaml is neither TOML nor JSON: write it as "
        "a .toml or .json file",
        ("evaluate", "--prompt", "notes.json"): "error: notes.json is not a prompt file: it needs the keys "
        "['job', 'loss', 'round', 'spec', 'start', 'z'] (write one with 'fedbpt job prompt', 'fedbpt simulate' "
        "or 'fedbpt compare')",
        ("job", "history", "nosuchjob", "--server", down, "--token", "t", "--retry-for", "0"): "error: server at "
        f"{down} unavailable for 0 s: check the URL and that the server runs (--retry-for waits longer)",
        ("job", "create", "--server", down, "--admin-token", "t", "--retry-for", "0"): "error: server at "
        f"{down} unavailable for 0 s: check the URL and that the server runs (--retry-for waits longer)",
    }


def test_a_new_users_mistakes_are_one_line_and_exit_2_before_any_model_loads(tmp_path):
    for arguments, first_line in new_user_mistakes(tmp_path).items():
        started = time.monotonic()
        result = run_fedbpt(*arguments, cwd=tmp_path)
        assert (result.returncode, result.stderr.splitlines()) == (2, [first_line]), arguments
        assert "Traceback" not in result.stderr + result.stdout
        assert time.monotonic() - started < 5, arguments  # checked before a model loads (which takes 10 s)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("server") / "fedbpt.db").start()
    yield process
    process.stop()


def test_a_wrong_token_and_an_unknown_job_are_one_line_errors(server):
    refused = run_fedbpt("job", "history", "nosuchjob", "--server", server.url, "--token", "wrong-token")
    assert (refused.returncode, refused.stderr.strip()) == (
        2,
        "error: unknown token; use the administrator token or a party token of this job (HTTP 401 bad_token)",
    )
    unknown = run_fedbpt("job", "history", "nosuchjob", "--server", server.url, "--token", ADMIN_TOKEN)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: ") and "nosuchjob" in unknown.stderr
    assert "Traceback" not in refused.stderr + unknown.stderr


def test_version_and_python_dash_m():
    version = subprocess.run([sys.executable, "-m", "fedbpt", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("fedbpt ")
    assert run_fedbpt("--version").stdout == version.stdout


def test_a_simulation_result_round_trips_into_evaluate_and_predict(tmp_path, tiny_model_dir):
    model = tiny_model_dir
    out = tmp_path / "runs" / "tiny.json"
    small = ["--parties", "2", "--rounds", "1", "--examples-per-party", "4", "--population", "2", "--iterations", "1"]
    common = ["--model", str(model), "--dtype", "float32"]
    result = invoke("simulate", *common, *small, "--eval-examples", "8", "--out", str(out))
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in out.with_suffix(".events.jsonl").read_text().splitlines()]
    assert [event["event"] for event in events] == ["run", "round", "round", "round", "end"]
    assert events[0]["git_commit"] and events[0]["packages"]["fedbpt"]
    assert {"loss", "sigma", "accuracy_raw", "accuracy_calibrated", "bytes_sent", "parties"} <= set(events[2])
    for prompt in (out, out.with_suffix(".prompt.json")):
        evaluated = invoke("evaluate", "--prompt", str(prompt), *common)
        assert evaluated.exit_code == 0, evaluated.output
        assert evaluated.stdout.splitlines()[-1].startswith("zero_shot=")
        predicted = invoke("predict", "a fine film", "a dull mess", "--prompt", str(prompt), *common)
        assert predicted.exit_code == 0, predicted.output
        lines = predicted.stdout.splitlines()
        assert len(lines) == 2 and {line.split("\t")[0] for line in lines} <= {"positive", "negative"}


def test_a_learned_prompt_exports_as_an_array_and_seeds_a_new_search(tmp_path, tiny_model_dir):
    common = ["--model", str(tiny_model_dir), "--dtype", "float32"]
    small = ["--parties", "2", "--rounds", "1", "--examples-per-party", "4", "--population", "2", "--iterations", "1"]
    first = tmp_path / "first.json"
    assert invoke("simulate", *common, *small, "--eval-examples", "8", "--out", str(first)).exit_code == 0
    learned = LearnedPrompt.load(first)
    for name in ("soft.npy", "soft.safetensors"):
        exported = invoke("prompt", "export", str(first), "--out", str(tmp_path / name), *common)
        assert exported.exit_code == 0, exported.output
    from safetensors.numpy import load_file

    array = np.load(tmp_path / "soft.npy")
    assert array.shape == (learned.spec.prompt.n_tokens, 32) and array.dtype == np.float32
    np.testing.assert_array_equal(load_file(tmp_path / "soft.safetensors")["soft_prompt"], array)
    assert one_line_error(invoke("prompt", "export", str(first), "--out", str(tmp_path / "soft.pt"))).endswith(
        "--out must end in .npy or .safetensors, got soft.pt"
    )

    spec = shown_spec(tmp_path, "--start-from", str(first), *small)
    assert spec.prompt.starts == (learned.start,)
    np.testing.assert_allclose(decode_vector(spec.prompt.initial), learned.z, rtol=1e-6)
    second = tmp_path / "second.json"
    resumed = invoke(
        "simulate", *common, *small, "--eval-examples", "8", "--start-from", str(first), "--out", str(second)
    )
    assert resumed.exit_code == 0, resumed.output
    results = json.loads(second.read_text())
    assert [record["kind"] for record in results["rounds"]] == ["search", "final"] and results["start"] == learned.start
    error = one_line_error(invoke("config", "show", "--start-from", str(first), "--seed", "7"))
    assert error == f"error: --start-from {first}: seed is 7, the prompt's 42; z only means something under those"


def test_task_check_reads_the_data_and_checks_the_verbalizer_with_the_tokenizer(tmp_path, tiny_model_dir):
    (tmp_path / "train.csv").write_text("sentence,label\na fine film,1\na dull film,0\ngood,1\n")
    (tmp_path / "dev.csv").write_text("sentence,label\nbad,0\n")
    task = {"name": "reviews", "template": "Review: {text}\nSentiment:", "train": "train.csv", "eval": "dev.csv"}
    task |= {"text_column": "sentence", "label_column": "label", "labels": {"0": " negative", "1": " positive"}}
    (tmp_path / "reviews.json").write_text(json.dumps(task))
    checked = invoke("task", "check", str(tmp_path / "reviews.json"), "--model", str(tiny_model_dir))
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.splitlines()[:2] == ["train: 3 rows (0 1, 1 2)", "eval: 1 rows (0 1, 1 0)"]
    (tmp_path / "wordy.json").write_text(json.dumps({**task, "labels": {"0": " very bad", "1": " positive"}}))
    error = one_line_error(invoke("task", "check", str(tmp_path / "wordy.json"), "--model", str(tiny_model_dir)))
    assert error.startswith("error: task 'reviews': verbalizer words must be one token each: ' very bad' is 2 tokens")
    (tmp_path / "dev.csv").unlink()
    error = one_line_error(invoke("task", "check", str(tmp_path / "reviews.json")))
    assert error.endswith("--data-dir sets that folder)") and "dev.csv does not exist" in error
