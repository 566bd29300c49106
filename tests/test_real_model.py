"""One small test per capability on the real default model (SmolLM2-135M from its PyPI package)."""

import numpy as np
import pytest
from serving import FEDBPT

from fedbpt.job import pin, prompted_model
from fedbpt.models import load_backend
from fedbpt.objective import Objective
from fedbpt.protocol import GlobalState
from fedbpt.search import local_search
from fedbpt.spec import JobSpec, SearchSpec


@pytest.fixture(scope="module")
def model():
    backend = load_backend("smollm2-135m", threads=2)
    return prompted_model(pin(JobSpec(), backend), backend)


def rows_and_labels(model, rows):
    return model.encode(rows), np.array([row.label for row in rows])


def test_calibrated_zero_shot_is_well_above_chance_on_sst2(model):
    assert model.calibrate
    examples, labels = rows_and_labels(model, model.task.load_eval()[:64])
    assert model.accuracy(None, examples, labels) > 0.65  # chance is 0.5; about 0.8 on the whole dev set


def test_a_few_cma_es_iterations_lower_the_training_loss(model):
    examples, labels = rows_and_labels(model, model.task.load_train()[:16])
    objective = Objective(model, examples, labels)  # the plain calibrated loss, no perturbation
    state = GlobalState(1, np.zeros(500), 0.5, model.start)
    before = objective(state.mean[None])[0]
    update = local_search(state, objective, SearchSpec(population=5, iterations=4), 7, "p", 16, float(before))
    assert update.fitness < before


# Longer runs on the real model: `pytest -m slow` (a few minutes on 2 cores).


@pytest.mark.slow
def test_a_simulated_federation_on_the_real_model_returns_a_prompt_no_worse_than_its_start(tmp_path):
    from fedbpt.simulate import simulate
    from fedbpt.spec import replace

    spec = replace(
        JobSpec(),
        federation={"parties": 3, "rounds": 3},
        search={"iterations": 2},
        data={"examples_per_party": 16, "eval_examples": 200},
    )
    results = simulate(spec, load_backend("smollm2-135m", threads=2), tmp_path / "run.json")
    assert results["status"] == "finished"
    start_loss = results["rounds"][0]["loss"]
    assert results["prompt"]["loss"] <= start_loss  # best-so-far: the returned prompt's pooled loss
    assert results["final_accuracy"] >= results["zero_shot"] - 0.02  # a broken pipeline falls to chance
    assert len((tmp_path / "run.events.jsonl").read_text().splitlines()) == len(results["rounds"]) + 2


@pytest.mark.slow
def test_fedbpt_local_runs_the_main_jobs_federation_on_the_real_model(tmp_path):
    import subprocess

    from fedbpt.job import LearnedPrompt

    command = [FEDBPT, "local", "--parties", "3", "--rounds", "1", "--iterations", "2", "--examples-per-party", "16"]
    command += ["--eval-examples", "90", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round   1  search  pooled loss" in result.stdout
    prompt = LearnedPrompt.load(tmp_path / "prompt.json")
    assert prompt.spec.pinned and prompt.spec.model.name == "smollm2-135m"
