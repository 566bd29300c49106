"""The job spec: round trips through TOML and JSON, and refusals that name the bad key."""

import json
import tomllib

import pytest

from fedbpt import spec as specs
from fedbpt.objective import DEFAULT_STARTS
from fedbpt.spec import JobSpec, SpecError, from_dict, load, replace, to_dict, to_toml

TASK_FILE_CONTENT = {
    "name": "reviews",
    "template": "Review: {text}\nSentiment:",
    "train": "train.csv",
    "eval": "dev.csv",
    "text_column": "sentence",
    "label_column": "label",
    "labels": {"0": " negative", "1": " positive"},
}


def unusual_spec() -> JobSpec:
    """A spec with a setting changed in every section, a task file's content and one start."""
    return from_dict(
        {
            "task": TASK_FILE_CONTENT,
            "name": "unusual",
            "seed": 7,
            "wire": "float32",
            "model": {"name": "smollm2-135m:q4_0"},
            "prompt": {"dim": 40, "n_tokens": 3, "placement": "after", "calibrate": False, "starts": ["vocabulary"]},
            "search": {"method": "zo-sgd", "population": 9, "step": 0.3, "step_floor": 0.01, "backtrack": 0.25},
            "federation": {"parties": 6, "rounds": 2, "parties_per_round": 4, "quorum": 3, "aggregator": "fedavg"},
            "data": {"examples_per_party": 8, "partition": "iid", "alpha": 0.5, "eval_examples": 100},
        }
    )


@pytest.mark.parametrize("spec", [JobSpec(), unusual_spec()], ids=["defaults", "unusual"])
def test_toml_round_trip_gives_the_same_spec(spec):
    assert from_dict(tomllib.loads(to_toml(spec))) == spec


@pytest.mark.parametrize("spec", [JobSpec(), unusual_spec()], ids=["defaults", "unusual"])
def test_json_round_trip_gives_the_same_spec(spec):
    assert from_dict(json.loads(json.dumps(to_dict(spec)))) == spec


def test_the_unusual_spec_differs_from_the_defaults():
    spec = unusual_spec()
    assert spec != JobSpec()
    assert spec.task_name == "reviews" and spec.prompt.starts == ("vocabulary",)
    assert spec.federation.per_round == 4 and spec.federation.needed == 3


def test_default_spec_offers_every_start_and_is_not_pinned():
    spec = JobSpec()
    assert spec.prompt.starts == DEFAULT_STARTS
    assert not spec.pinned


def test_per_round_and_needed_default_to_all_parties():
    federation = from_dict({"federation": {"parties": 5}}).federation
    assert federation.per_round == 5 and federation.needed == 5


@pytest.mark.parametrize(
    "data, key",
    [
        ({"populaton": 5}, "populaton: unknown key"),
        ({"search": {"populaton": 5}}, "search.populaton: unknown key"),
        ({"federation": {"ranking": "examples", "rank": 1}}, "federation.rank: unknown key"),
    ],
)
def test_unknown_keys_are_refused_by_their_dotted_name(data, key):
    with pytest.raises(SpecError, match=key):
        from_dict(data)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"search": {"population": "5"}}, "search.population"),
        ({"search": {"population": 5.0}}, "search.population"),
        ({"prompt": {"calibrate": 1}}, "prompt.calibrate"),
        ({"seed": "42"}, "seed"),
        ({"search": {"step": "0.1"}}, "search.step"),
        ({"prompt": {"starts": "preamble"}}, "prompt.starts"),
        ({"search": []}, "search"),
    ],
)
def test_wrong_types_are_refused_by_their_dotted_name(data, key):
    with pytest.raises(SpecError, match=rf"^{key}: "):
        from_dict(data)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"search": {"population": 1}}, "search.population"),
        ({"search": {"perturb_rate": 1}}, "search.perturb_rate"),
        ({"search": {"step": 0}}, "search.step"),
        ({"search": {"backtrack": 0}}, "search.backtrack"),
        ({"seed": -1}, "seed"),
        ({"federation": {"rounds": 0}}, "federation.rounds"),
        ({"prompt": {"dim": 0}}, "prompt.dim"),
        ({"wire": "float64"}, "wire"),
        ({"federation": {"aggregator": "mean"}}, "federation.aggregator"),
        ({"federation": {"ranking": "loss"}}, "federation.ranking"),
        ({"data": {"partition": "shards"}}, "data.partition"),
    ],
)
def test_out_of_range_values_are_refused_by_their_dotted_name(data, key):
    with pytest.raises(SpecError, match=rf"^{key}: "):
        from_dict(data)


def cross_field_error(data: dict, section: str) -> str:
    """A refusal that involves two keys of one section: the message starts with the section."""
    with pytest.raises(SpecError) as error:
        from_dict(data)
    message = str(error.value)
    assert message.startswith(f"{section}: ")
    return message


def test_parties_per_round_cannot_exceed_parties():
    message = cross_field_error({"federation": {"parties": 3, "parties_per_round": 4}}, "federation")
    assert "parties_per_round (4) cannot exceed parties (3)" in message


def test_quorum_cannot_exceed_parties_per_round():
    message = cross_field_error({"federation": {"parties": 3, "parties_per_round": 2, "quorum": 3}}, "federation")
    assert "quorum (3) cannot exceed parties_per_round (2)" in message


def test_quorum_cannot_exceed_parties_when_every_party_takes_part():
    message = cross_field_error({"federation": {"parties": 3, "quorum": 4}}, "federation")
    assert "quorum (4) cannot exceed parties_per_round (3)" in message


def test_step_floor_cannot_exceed_the_step():
    message = cross_field_error({"search": {"step": 0.2, "step_floor": 0.5}}, "search")
    assert "step_floor (0.5) cannot exceed step (0.2)" in message


@pytest.mark.parametrize("starts", [["preamble", "nope"], ["preamble", "preamble"]])
def test_unknown_or_repeated_starts_are_refused(starts):
    assert "starts must be distinct names" in cross_field_error({"prompt": {"starts": starts}}, "prompt")


def test_no_start_at_all_is_refused():
    with pytest.raises(SpecError, match="^prompt.starts: "):
        from_dict({"prompt": {"starts": []}})


def test_an_unknown_task_is_refused():
    with pytest.raises(SpecError, match="unknown task 'sst3'"):
        from_dict({"task": "sst3"})


def test_a_task_file_path_is_accepted_without_reading_it():
    assert from_dict({"task": "tasks/mine.toml"}).task_name == "mine"


def test_a_task_files_content_with_missing_keys_is_refused():
    with pytest.raises(SpecError, match="is missing"):
        from_dict({"task": {"name": "reviews"}})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_not_a_finite_number_is_refused(value):
    with pytest.raises(SpecError, match="^search.step: "):
        from_dict({"search": {"step": value}})


def test_every_bad_key_is_named_in_one_message():
    with pytest.raises(SpecError) as error:
        from_dict({"seed": -1, "search": {"population": 1}})
    assert "seed: " in str(error.value) and "search.population: " in str(error.value)


def test_a_spec_that_is_not_a_table_is_refused():
    with pytest.raises(SpecError):
        from_dict(["not", "a", "spec"])


def test_specs_are_frozen():
    spec = JobSpec()
    with pytest.raises(AttributeError):
        spec.seed = 3


def test_replace_changes_only_the_given_settings():
    spec = replace(JobSpec(), search={"step": 0.3}, seed=43)
    assert spec.search.step == 0.3 and spec.seed == 43
    assert spec.search.population == JobSpec().search.population
    assert spec.federation == JobSpec().federation


def test_replace_sets_a_task_files_content_as_given():
    # BUG (fedbpt/spec.py, replace): a dict value is merged into the old one whenever the old value is a dict,
    # so replacing one task file's content with another keeps the old task's keys: here the old
    # text_pair_column stays while the new template has no {text_pair}, and the valid new task is refused.
    pair_task = {
        **TASK_FILE_CONTENT,
        "template": "Premise: {text}\nHypothesis: {text_pair}\nAnswer:",
        "text_pair_column": "hypothesis",
    }
    spec = replace(from_dict({"task": pair_task}), task=TASK_FILE_CONTENT)
    assert spec.task == TASK_FILE_CONTENT


def test_replace_validates():
    with pytest.raises(SpecError, match="^search.population: "):
        replace(JobSpec(), search={"population": 1})
    with pytest.raises(SpecError, match="search.nope: unknown key"):
        replace(JobSpec(), search={"nope": 1})


def test_load_reads_toml_and_json(tmp_path):
    spec = unusual_spec()
    (tmp_path / "job.toml").write_text(to_toml(spec))
    (tmp_path / "job.json").write_text(json.dumps(to_dict(spec)))
    assert load(tmp_path / "job.toml") == spec
    assert load(tmp_path / "job.json") == spec


def one_line_error(call) -> str:
    with pytest.raises(SpecError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_load_of_a_missing_file_is_a_one_line_spec_error(tmp_path):
    message = one_line_error(lambda: load(tmp_path / "missing.toml"))
    assert message.startswith("cannot read ") and "missing.toml" in message


def test_load_of_bad_toml_is_a_one_line_spec_error(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[search\npopulation = 5\n")
    assert "is not valid TOML" in one_line_error(lambda: load(path))


def test_load_of_bad_json_is_a_one_line_spec_error(tmp_path):
    path = tmp_path / "job.json"
    path.write_text("{'seed': 1}")
    assert "is not valid JSON" in one_line_error(lambda: load(path))


def test_load_of_a_toml_file_with_a_bad_value_names_the_key(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[search]\nstep = nan\n")
    assert one_line_error(lambda: load(path)).startswith("search.step: ")


@pytest.mark.parametrize("aggregator", specs.AGGREGATORS)
def test_every_listed_aggregator_is_accepted(aggregator):
    assert from_dict({"federation": {"aggregator": aggregator}}).federation.aggregator == aggregator
