"""Scoring on the tiny random-weight model: shared scoring, encoding, calibration, starting prompts, the objective."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_backend

from fedbpt.data import Example
from fedbpt.job import JobMismatch, pin, prompted_model
from fedbpt.objective import (
    CONTENT_FREE,
    STARTS,
    Objective,
    PromptedModel,
    cross_entropy,
    encode_examples,
    hinge,
    perturb,
    start_tokens,
)
from fedbpt.projection import Projection
from fedbpt.spec import from_dict
from fedbpt.spec import replace as replace_spec
from fedbpt.tasks import TaskError, builtin_task

TASK = builtin_task("sst2")
EXAMPLES = TASK.load_eval()[:24]
LABELS = np.array([example.label for example in EXAMPLES])


def prompted(backend, placement="before", n_tokens=6, calibrate=True):
    projection = Projection(5, 40, n_tokens, backend.hidden_size, 0.02)
    return PromptedModel.build(backend, TASK, projection, placement, calibrate)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def calibrated_by_hand(logits: np.ndarray, content_free_logits: np.ndarray) -> np.ndarray:
    """Zhao et al.'s calibration: divide each label's probability by its mean over the content-free inputs,
    renormalize. (candidates, examples, labels) and (candidates, k, labels) -> probabilities."""
    prior = softmax(content_free_logits).mean(axis=1, keepdims=True)
    divided = softmax(logits) / prior
    return divided / divided.sum(axis=-1, keepdims=True)


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


def test_content_free_inputs_are_the_template_filled_with_each_content_free_text(backend):
    model = prompted(backend)
    assert model.content_free == model.encode([Example(text, 0) for text in CONTENT_FREE])


@pytest.mark.parametrize("with_prompt", [True, False])
def test_scores_are_probabilities_calibrated_by_the_content_free_inputs(backend, with_prompt):
    model = prompted(backend)
    encoded = model.encode(EXAMPLES[:8])
    z = np.random.default_rng(3).normal(size=(2, 40)) if with_prompt else None
    expected = calibrated_by_hand(model.logits(z, encoded), model.logits(z, model.content_free))
    scores = model.scores(z, encoded)
    assert scores.shape == ((2 if with_prompt else 1), 8, 2)
    np.testing.assert_allclose(np.exp(scores), expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(expected, softmax(model.logits(z, encoded)), atol=1e-3)  # calibration changed them


def test_predictions_and_accuracy_use_the_calibrated_scores(backend):
    model = prompted(backend)
    encoded = model.encode(EXAMPLES)
    expected = calibrated_by_hand(model.logits(None, encoded), model.logits(None, model.content_free))[0].argmax(-1)
    raw = model.logits(None, encoded)[0].argmax(-1)
    assert not np.array_equal(expected, raw)  # on this model calibration flips some predictions
    np.testing.assert_array_equal(model.predict(None, encoded), expected)
    assert model.accuracy(None, encoded, LABELS) == pytest.approx((expected == LABELS).mean())


def test_without_calibration_scores_are_the_plain_log_softmax(backend):
    model = prompted(backend, calibrate=False)
    encoded = model.encode(EXAMPLES[:8])
    z = np.random.default_rng(4).normal(size=(2, 40))
    logits = model.logits(z, encoded)
    np.testing.assert_allclose(np.exp(model.scores(z, encoded)), softmax(logits), rtol=1e-5)
    np.testing.assert_array_equal(model.predict(z[0], encoded), logits[0].argmax(-1))


def fixed_scorer(examples):
    """Raw label logits that depend only on each example's tokens: two candidates, two labels."""
    rows = [[len(example.ids) / 5, (sum(example.ids) % 7) / 3] for example in examples]
    return np.stack([np.array(rows), -np.array(rows)])


def test_scores_of_calibrates_any_scorer_the_same_way(backend):
    model = prompted(backend)
    encoded = model.encode(EXAMPLES[:8])
    expected = calibrated_by_hand(fixed_scorer(encoded), fixed_scorer(model.content_free))
    np.testing.assert_allclose(np.exp(model.scores_of(fixed_scorer, encoded)), expected, rtol=1e-10)
    raw = replace(model, calibrate=False).scores_of(fixed_scorer, encoded)
    np.testing.assert_allclose(np.exp(raw), softmax(fixed_scorer(encoded)), rtol=1e-10)


@pytest.mark.parametrize("loss, function", [("ce", cross_entropy), ("hinge", hinge)])
def test_loss_is_the_loss_of_the_calibrated_scores(backend, loss, function):
    model = prompted(backend)
    encoded = model.encode(EXAMPLES[:8])
    z = np.random.default_rng(5).normal(size=(3, 40))
    np.testing.assert_allclose(model.loss(z, encoded, LABELS[:8], loss), function(model.scores(z, encoded), LABELS[:8]))


@pytest.fixture(scope="module")
def confident_backend():
    """A tiny model with large label logits, so that calibration changes the loss ratio noticeably."""
    backend = tiny_backend(seed=1)
    with torch.no_grad():
        backend.model.lm_head.weight *= 30
    return backend


@pytest.mark.parametrize("loss, function", [("ce", cross_entropy), ("hinge", hinge)])
def test_perturbed_fitness_is_clean_loss_over_perturbed_loss_on_calibrated_scores(confident_backend, loss, function):
    backend = confident_backend
    model = prompted(backend)
    encoded = model.encode(EXAMPLES[:8])
    labels = LABELS[:8]
    perturbed = perturb(encoded, 0.5, backend.vocab_size, 3)
    z = np.random.default_rng(2).normal(size=(3, 40))
    fitness = Objective(model, encoded, labels, loss, perturbed)(z)
    clean, scrambled = function(model.scores(z, encoded), labels), function(model.scores(z, perturbed), labels)
    np.testing.assert_allclose(fitness, clean / np.maximum(scrambled, 1e-8), rtol=1e-4)
    np.testing.assert_allclose(Objective(model, encoded, labels, loss)(z), clean, rtol=1e-4)
    uncalibrated = function(model.logits(z, encoded), labels) / function(model.logits(z, perturbed), labels)
    assert not np.allclose(fitness, uncalibrated, rtol=1e-2)


def test_a_rounds_objective_perturbs_with_its_seed_unless_the_rate_is_zero(backend):
    model = prompted(backend)
    encoded = model.encode(EXAMPLES[:8])
    labels = LABELS[:8]
    assert Objective.for_round(model, encoded, labels, "ce", 0.0, 3).perturbed is None
    objective = Objective.for_round(model, encoded, labels, "hinge", 0.5, 3)
    assert objective.perturbed == perturb(encoded, 0.5, backend.vocab_size, 3) and objective.loss == "hinge"


@pytest.mark.parametrize("start", STARTS)
def test_every_start_is_made_of_real_token_embeddings(backend, start):
    model = prompted(backend, n_tokens=6).with_start(start)
    ids = start_tokens(start, TASK, backend, 6, model.seed)
    assert len(ids) == 6 and all(0 <= i < backend.vocab_size for i in ids)
    assert model.p0.shape == (6, backend.hidden_size) and model.p0.dtype == np.float32
    embeddings = backend.model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(model.p0, embeddings[ids])
    assert model.start == start


def test_starts_differ_and_text_starts_end_with_the_instruction(backend):
    prompts = {start: prompted(backend, n_tokens=6).with_start(start).p0 for start in STARTS}
    assert not np.array_equal(prompts["preamble"], prompts["vocabulary"])
    assert not np.array_equal(prompts["preamble"], prompts["preamble+instruction"])
    instruction = backend.tokenize(" " + TASK.instruction.strip() + "\n")
    assert start_tokens("preamble+instruction", TASK, backend, 40, 0)[-len(instruction) :] == instruction


def test_the_vocabulary_start_depends_on_the_seed(backend):
    assert start_tokens("vocabulary", TASK, backend, 8, 0) != start_tokens("vocabulary", TASK, backend, 8, 1)


def test_with_start_keeps_the_backend_and_the_encodings(backend):
    model = prompted(backend)
    other = model.with_start("vocabulary")
    assert other.backend is model.backend and other.content_free is model.content_free
    assert other.label_ids == model.label_ids and other.projection is model.projection
    assert model.start == "preamble+instruction"  # the original is unchanged
    assert not np.array_equal(other.p0, model.p0)


def test_an_unknown_start_is_refused(backend):
    with pytest.raises(ValueError, match="unknown start 'random'"):
        prompted(backend).with_start("random")


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
    with pytest.raises(TaskError, match="placement 'after'"):  # its content-free inputs are encoded when built
        PromptedModel.build(backend, bare, Projection(5, 40, 6, backend.hidden_size, 0.02), "after")


def test_pinning_records_the_model_and_the_projection(backend):
    spec = pin(from_dict({"prompt": {"dim": 40, "n_tokens": 6}, "seed": 5}), backend)
    assert spec.pinned and spec.model.identity == backend.identity and spec.model.hidden_size == backend.hidden_size
    assert spec.prompt.scale == pytest.approx(backend.embedding_std() / np.sqrt(40))
    model = prompted_model(spec, backend)
    assert model.projection.fingerprint() == spec.prompt.fingerprint and model.start == spec.prompt.starts[0]


def test_a_party_whose_projection_differs_from_the_pinned_one_is_refused(backend):
    spec = pin(from_dict({"prompt": {"dim": 40, "n_tokens": 6}}), backend)
    other = replace_spec(spec, prompt={"fingerprint": "0" * 16})
    with pytest.raises(JobMismatch, match="projection fingerprint"):
        prompted_model(other, backend)
    with pytest.raises(JobMismatch, match="different base model"):
        prompted_model(replace_spec(spec, model={"identity": "llama-h64-other"}), backend)
