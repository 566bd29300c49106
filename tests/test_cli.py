"""The command line where it needs no model: specs from flags and files, and refusals with one-line errors."""

import importlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedbpt.job import LearnedPrompt
from fedbpt.options import settings
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
