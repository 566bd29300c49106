"""One small test per capability on the real default model (SmolLM2-135M from its PyPI package)."""

import numpy as np
import pytest

from fedbpt.aggregate import GlobalState
from fedbpt.models import load_backend
from fedbpt.objective import Objective, PromptedModel
from fedbpt.projection import Projection, projection_scale
from fedbpt.search import SearchConfig, local_search
from fedbpt.tasks import builtin_task


@pytest.fixture(scope="module")
def model():
    backend = load_backend("smollm2-135m", threads=2)
    task = builtin_task("sst2")
    scale = projection_scale(backend.embedding_std(), 500, sigma0=1.0, alpha=0.5)
    projection = Projection(42, 500, 50, backend.hidden_size, scale)
    return PromptedModel.build(backend, task, projection)


def test_zero_shot_beats_65_percent_on_sst2(model):
    rows = model.task.load_eval()[:64]
    accuracy = model.accuracy(None, model.encode(rows), np.array([row.label for row in rows]))
    assert accuracy > 0.65


def test_a_few_cma_es_iterations_lower_the_training_loss(model):
    rows = model.task.load_train()[:16]
    objective = Objective(model, model.encode(rows), np.array([row.label for row in rows]))
    start = GlobalState.initial(500, 1.0)
    before = objective(start.mean[None])[0]
    update = local_search(start, objective, SearchConfig(population=5, iterations=4, perturb_rate=0), 7, "p", 16)
    assert update.fitness < before
