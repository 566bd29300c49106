"""A tiny random-weight Llama written as a GGUF file, with the real SmolLM2 tokenizer copied from the
packaged model: llama.cpp and transformers both load it, so the two backends can be compared on the
same weights in milliseconds."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from fedbpt.models import PACKAGED

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128


def write_tiny_gguf(path: Path, seed: int = 0, hidden: int = HIDDEN) -> Path:
    source = gguf.GGUFReader(PACKAGED["smollm2-135m"].gguf_path())
    tokens = source.get_field("tokenizer.ggml.tokens").contents()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny-llama-{seed}")
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(hidden // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(str(source.get_field("tokenizer.ggml.pre").contents()))
    writer.add_token_list(tokens)
    writer.add_token_types(source.get_field("tokenizer.ggml.token_type").contents())
    writer.add_token_merges(source.get_field("tokenizer.ggml.merges").contents())
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    rng = np.random.default_rng(seed)

    def weight(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    head_dim = hidden // HEADS
    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden, scale=0.5))
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", 1 + weight(hidden, scale=0.1))
        writer.add_tensor(f"{block}.attn_q.weight", weight(HEADS * head_dim, hidden))
        writer.add_tensor(f"{block}.attn_k.weight", weight(KV_HEADS * head_dim, hidden))
        writer.add_tensor(f"{block}.attn_v.weight", weight(KV_HEADS * head_dim, hidden))
        writer.add_tensor(f"{block}.attn_output.weight", weight(hidden, HEADS * head_dim))
        writer.add_tensor(f"{block}.ffn_norm.weight", 1 + weight(hidden, scale=0.1))
        writer.add_tensor(f"{block}.ffn_gate.weight", weight(FFN, hidden))
        writer.add_tensor(f"{block}.ffn_up.weight", weight(FFN, hidden))
        writer.add_tensor(f"{block}.ffn_down.weight", weight(hidden, FFN))
    writer.add_tensor("output_norm.weight", 1 + weight(hidden, scale=0.1))
    writer.add_tensor("output.weight", weight(len(tokens), hidden, scale=0.5))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
