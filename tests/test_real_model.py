"""One small test per capability on the real default model (SmolLM2-135M from its PyPI package)."""

import numpy as np
import pytest

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
