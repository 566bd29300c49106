"""The llama.cpp backend on a tiny random-weight GGUF model: shared scoring equals one-sequence-at-a-time
decoding, and it agrees with the transformers backend loaded from the same file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_gguf import write_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedbpt.backends.hf import TransformersBackend
from fedbpt.backends.llama import LlamaCppBackend, quantize
from fedbpt.job import JobMismatch, pin, prompted_model
from fedbpt.models import ModelNotFound, available_models, gguf_file, load_backend, prepare
from fedbpt.objective import PromptedModel
from fedbpt.projection import Projection
from fedbpt.spec import JobSpec, from_dict
from fedbpt.tasks import builtin_task

TASK = builtin_task("sst2")
EXAMPLES = TASK.load_eval()[:20]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama(tiny_file):
    return LlamaCppBackend(tiny_file, threads=1)


@pytest.fixture(scope="module")
def transformers_twin(tiny_file):
    tokenizer = AutoTokenizer.from_pretrained(tiny_file.parent, gguf_file=tiny_file.name)
    model = AutoModelForCausalLM.from_pretrained(tiny_file.parent, gguf_file=tiny_file.name, dtype=torch.float32)
    return TransformersBackend(model, tokenizer)


def prompted(backend, placement="before"):
    return PromptedModel.build(backend, TASK, Projection(5, 40, 6, backend.hidden_size, 0.05), placement)


def prompts(model, count=3):
    return model.p0[None] + model.projection(np.random.default_rng(0).normal(size=(count, 40)))


@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("with_prompt", [True, False])
def test_shared_scoring_equals_one_sequence_at_a_time(tiny_file, placement, with_prompt):
    # Small limits force several cache loads per call and batches cut through sequences.
    backend = LlamaCppBackend(tiny_file, n_ctx=256, n_batch=32, n_seq_max=8, threads=1)
    model = prompted(backend, placement)
    encoded = model.encode(EXAMPLES)
    batch = prompts(model) if with_prompt else None
    shared = backend.label_logits(batch, encoded, model.label_ids, placement)
    alone = backend.label_logits(batch, encoded, model.label_ids, placement, shared=False)
    assert shared.shape == ((3 if with_prompt else 1), len(EXAMPLES), 2)
    np.testing.assert_allclose(shared, alone, atol=2e-3)
    assert not np.allclose(shared[..., 0], shared[..., 1])


@pytest.mark.parametrize("placement", ["before", "after"])
def test_llama_cpp_and_transformers_agree_on_the_same_weights(llama, transformers_twin, placement):
    assert llama.identity == transformers_twin.identity
    assert llama.bos_ids == transformers_twin.bos_ids
    assert (llama.hidden_size, llama.vocab_size) == (transformers_twin.hidden_size, transformers_twin.vocab_size)
    texts = [example.text for example in EXAMPLES]
    assert [llama.tokenize(text) for text in texts] == [transformers_twin.tokenize(text) for text in texts]
    ids = llama.tokenize(" a gripping, funny film")
    np.testing.assert_allclose(llama.token_embeddings(ids), transformers_twin.token_embeddings(ids), atol=1e-6)
    assert llama.embedding_std() == pytest.approx(transformers_twin.embedding_std(), rel=1e-4)
    ours, theirs = prompted(llama, placement), prompted(transformers_twin, placement)
    encoded = ours.encode(EXAMPLES)
    batch = prompts(ours)
    np.testing.assert_allclose(
        llama.label_logits(batch, encoded, ours.label_ids, placement),
        transformers_twin.label_logits(batch, encoded, theirs.label_ids, placement),
        atol=2e-3,
    )


def test_quantized_variants_share_the_identity_and_a_different_model_is_refused(tiny_file, llama, tmp_path):
    spec = pin(from_dict({"model": {"name": str(tiny_file)}, "prompt": {"dim": 40, "n_tokens": 6}}), llama)
    quantized = tmp_path / "tiny.q8_0.gguf"
    quantize(tiny_file, quantized, "q8_0")
    assert quantized.stat().st_size < tiny_file.stat().st_size / 3
    q8 = LlamaCppBackend(quantized, threads=1)
    model = prompted_model(spec, q8)
    encoded = model.encode(EXAMPLES)
    reference = prompted_model(spec, llama)
    np.testing.assert_allclose(model.logits(np.zeros(40), encoded), reference.logits(np.zeros(40), encoded), atol=0.2)
    wider = LlamaCppBackend(write_tiny_gguf(tmp_path / "wide.gguf", hidden=48), threads=1)
    with pytest.raises(JobMismatch, match="different base model"):
        prompted_model(spec, wider)


def test_real_model_scores_agree_across_backends():
    """SmolLM2's packaged Q4_1 file in llama.cpp against its dequantized weights in transformers (fp32)."""
    reference = load_backend("smollm2-135m", dtype="float32", threads=2)
    edge = load_backend("smollm2-135m", threads=2, engine="llama.cpp")
    spec = pin(JobSpec(), reference)
    z = np.random.default_rng(0).normal(size=500)
    rows = TASK.load_eval()[:16]
    logits = []
    for backend in (reference, edge):
        model = prompted_model(spec, backend)
        logits.append(model.logits(z, model.encode(rows))[0])
    expected, actual = logits
    assert (expected.argmax(-1) == actual.argmax(-1)).mean() >= 15 / 16
    assert np.abs(expected - actual).mean() < 0.25  # 0.12 on 200 examples: llama.cpp quantizes activations to 8 bits


def test_prepare_quantizes_a_packaged_model_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDBPT_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="quant must be one of"):
        prepare("smollm2-135m", "q5_0")
    with pytest.raises(ModelNotFound, match="fedbpt models prepare smollm2-135m --quant q4_0"):
        gguf_file("smollm2-135m:q4_0")
    path = prepare("smollm2-135m", "q4_0")
    assert gguf_file("smollm2-135m:q4_0") == path and prepare("smollm2-135m", "q4_0") == path
    assert list(path.parent.iterdir()) == [path]  # published by one rename, no partial files left
    listed = {entry.name: entry for entry in available_models()}
    assert listed["smollm2-135m:q4_0"].size == path.stat().st_size
    assert "llama_model_quantize" in listed["smollm2-135m:q4_0"].origin
