import numpy as np
import pytest
import torch
from conftest import tiny_backend

from fedbpt.objective import Objective, PromptedModel, cross_entropy, encode_examples, hinge, perturb
from fedbpt.projection import Projection
from fedbpt.tasks import TaskError, builtin_task

TASK = builtin_task("sst2")
EXAMPLES = TASK.load_eval()[:24]


def prompted(backend, placement="before", n_tokens=6):
    return PromptedModel.build(backend, TASK, Projection(5, 40, n_tokens, backend.hidden_size, 0.02), placement)


@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("with_prompt", [True, False])
def test_shared_scoring_equals_naive_scoring(placement, with_prompt):
    # Small budgets force many packed rows and uneven forwards.
    backend = tiny_backend(tokens_per_forward=96, sequences_per_forward=7, tokens_per_row=40)
    model = prompted(backend, placement)
    encoded = model.encode(EXAMPLES)
    prompts = model.p0[None] + model.projection(np.random.default_rng(0).normal(size=(3, 40))) if with_prompt else None
    shared = backend.label_logits(prompts, encoded, model.label_ids, placement)
    naive = backend.label_logits(prompts, encoded, model.label_ids, placement, shared=False)
    assert shared.shape == ((3 if with_prompt else 1), len(EXAMPLES), 2)
    np.testing.assert_allclose(shared, naive, rtol=1e-4, atol=1e-5)


def test_candidates_are_scored_independently(backend):
    model = prompted(backend)
    encoded = model.encode(EXAMPLES[:5])
    z = np.random.default_rng(1).normal(size=(4, 40))
    together = model.logits(z, encoded)
    alone = np.stack([model.logits(z[i], encoded)[0] for i in range(4)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_bf16_backend_runs_and_stays_close_to_fp32():
    fp32, bf16 = tiny_backend(torch.float32), tiny_backend(torch.bfloat16)
    model32, model16 = prompted(fp32), prompted(bf16)
    encoded = model32.encode(EXAMPLES)
    z = np.zeros((1, 40))
    np.testing.assert_allclose(model16.logits(z, encoded), model32.logits(z, encoded), atol=0.1)


def test_encoding_marks_text_tokens_and_prompt_position(backend):
    [encoded] = encode_examples(TASK, EXAMPLES[:1], backend.tokenize)
    tokens = backend.tokenizer.convert_ids_to_tokens(list(encoded.ids))
    text_tokens = [t for t, is_text in zip(tokens, encoded.text_mask, strict=True) if is_text]
    assert tokens[:2] == ["Review", ":"] and tokens[-2:] == ["Sentiment", ":"]
    assert text_tokens == backend.tokenizer.tokenize(EXAMPLES[0].text)
    assert encoded.split == len(tokens) - 2


def test_perturbation_replaces_only_text_tokens_at_the_rate(backend):
    encoded = encode_examples(TASK, EXAMPLES, backend.tokenize)
    assert perturb(encoded, 0.0, backend.vocab_size, 1) == encoded
    perturbed = perturb(encoded, 0.5, backend.vocab_size, 1)
    assert perturbed == perturb(encoded, 0.5, backend.vocab_size, 1)
    changed = text = 0
    for before, after in zip(encoded, perturbed, strict=True):
        for a, b, is_text in zip(before.ids, after.ids, before.text_mask, strict=True):
            assert is_text or a == b
            text += is_text
            changed += a != b
    assert 0.4 < changed / text < 0.6


def test_losses():
    logits = np.array([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]])
    labels = np.array([0, 1])
    np.testing.assert_allclose(cross_entropy(logits, labels), [np.log1p(np.exp(-2.0)), np.log(2.0)])
    np.testing.assert_allclose(hinge(logits, labels), [0.0, 1.0])


@pytest.mark.parametrize("loss, function", [("ce", cross_entropy), ("hinge", hinge)])
def test_perturbed_fitness_is_clean_loss_over_perturbed_loss(backend, loss, function):
    model = prompted(backend)
    encoded = model.encode(EXAMPLES[:8])
    labels = np.array([example.label for example in EXAMPLES[:8]])
    perturbed = perturb(encoded, 0.5, backend.vocab_size, 3)
    z = np.random.default_rng(2).normal(size=(3, 40))
    fitness = Objective(model, encoded, labels, loss, perturbed)(z)
    expected = function(model.logits(z, encoded), labels) / np.maximum(
        function(model.logits(z, perturbed), labels), 1e-8
    )
    np.testing.assert_allclose(fitness, expected, rtol=1e-4)
    np.testing.assert_allclose(Objective(model, encoded, labels, loss)(z), function(model.logits(z, encoded), labels))


def test_a_rounds_objective_perturbs_with_its_seed_unless_the_rate_is_zero(backend):
    model = prompted(backend)
    encoded = model.encode(EXAMPLES[:8])
    labels = np.array([example.label for example in EXAMPLES[:8]])
    assert Objective.for_round(model, encoded, labels, "ce", 0.0, 3).perturbed is None
    objective = Objective.for_round(model, encoded, labels, "hinge", 0.5, 3)
    assert objective.perturbed == perturb(encoded, 0.5, backend.vocab_size, 3) and objective.loss == "hinge"


def test_after_placement_needs_words_after_the_text(backend):
    task = builtin_task("sst2")
    bare = type(task)(
        task.name,
        "Review: {text}",
        task.label_names,
        task.verbalizers,
        task.instruction,
        task.load_train,
        task.load_eval,
    )
    model = PromptedModel.build(backend, bare, Projection(5, 40, 6, backend.hidden_size, 0.02), "after")
    with pytest.raises(TaskError, match="placement 'after'"):
        model.encode(EXAMPLES[:2])
