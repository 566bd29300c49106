"""Shared fixtures: a tiny random-weight Llama and a word-level tokenizer built from SST-2 words.

They exercise every code path of the transformers backend in milliseconds; the real model is used
only in test_real_model.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedbpt.backends.hf import TransformersBackend
from fedbpt.tasks import builtin_task

# The tiny models' matrices are too small for a second thread to help; on a busy 2-core machine it costs 10-100x.
torch.set_num_threads(1)


def word_tokenizer(size: int = 3000) -> PreTrainedTokenizerFast:
    counts = Counter(word for example in builtin_task("sst2").load_train()[:20000] for word in example.text.split())
    words = ["[UNK]", "Review", ":", "Sentiment", "positive", "negative", "\n"]
    words += [word for word, _ in counts.most_common(size) if word not in words]
    model = Tokenizer(WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    model.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]")


def tiny_backend(dtype: torch.dtype = torch.float32, seed: int = 0, **options) -> TransformersBackend:
    tokenizer = word_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    return TransformersBackend(model, tokenizer, **options)


@pytest.fixture(scope="session")
def backend() -> TransformersBackend:
    return tiny_backend()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, backend) -> Path:
    """The tiny model saved as a Hugging Face folder, for commands that take --model."""
    folder = tmp_path_factory.mktemp("tiny-model")
    backend.model.save_pretrained(folder)
    backend.tokenizer.save_pretrained(folder)
    return folder
