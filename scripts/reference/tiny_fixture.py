#!/usr/bin/env python3
"""Small committed checkpoints for fast tests, with Hugging Face reference values.

Writes into crates/peft-models/tests/fixtures/:
  * tiny-llama/       a randomly initialised LlamaForCausalLM (2 layers, GQA 4:2, head_dim 8)
                      saved by transformers (config.json, model.safetensors) with a byte-level
                      BPE tokenizer.json trained here;
  * tiny-llama.gguf   the same weights written the way llama.cpp's converter writes a `llama`
                      model (Q/K rows permuted, llama.cpp tensor names, tokenizer in metadata);
                      transformers loads it back as a check of that convention;
  * tiny_reference.json  logits of transformers on a few sequences (from the safetensors
                      model and from the GGUF, whose down projections are Q8_0), and tokenizer ids;
  * quants.gguf       one tensor per supported ggml type (quantised by gguf-py, or random valid
                      blocks for the K-quants) next to "expected.<type>" F32 tensors holding
                      gguf-py's dequantisation of it.

Usage: python scripts/reference/tiny_fixture.py
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q, quants  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

OUT = "crates/peft-models/tests/fixtures"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Prompt tuning prepends trainable embeddings to the input.",
    "Prefix tuning adds trainable keys and values to every layer.",
    "name = Blue Spice | food = Italian | area = city centre",
    "The restaurant serves cheap French food near the river.",
    "In 2024 there were 366 days; 12 months; 52 weeks.",
] * 20
STRINGS = ["The fox jumps.", "Prefix tuning 2024!", "name = Blue Spice", "  spaces\n\nnewline", "unknown ünïcode 🤗"]
SEQS = [[5, 17, 42, 99, 3, 250, 7, 64], [1, 2, 3], [300, 12, 45, 45, 45, 8, 200, 150, 11, 9, 4]]


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: rotate-half rows -> interleaved pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, cfg, tok, path):
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    w.add_token_list(tokens)
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                t = permute(t, cfg.num_attention_heads)
            elif hf == "self_attn.k_proj":
                t = permute(t, cfg.num_key_value_heads)
            if hf == "mlp.down_proj":
                t = quants.quantize(t, Q.Q8_0)  # one quantised tensor in the model
                w.add_tensor(f"blk.{i}.{gg}.weight", t, raw_dtype=Q.Q8_0)
            else:
                w.add_tensor(f"blk.{i}.{gg}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_quants(path):
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    x = rng.standard_normal((2, 512)).astype(np.float32)
    for qt in [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]:
        raw = x if qt == Q.F32 else quants.quantize(x, qt)
        w.add_tensor(f"x.{qt.name}", raw, raw_dtype=qt)
        w.add_tensor(f"expected.{qt.name}", quants.dequantize(raw, qt).astype(np.float32).reshape(2, 512))
    for qt in [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        raw = rng.integers(0, 256, size=(2, 512 // block * size), dtype=np.uint8)
        # Keep the f16 scale fields finite and modest: overwrite them with small positive halves.
        offsets = {Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}[qt]
        blocks = raw.reshape(-1, size)
        for off in offsets:
            halves = (rng.random(blocks.shape[0]) * 0.1 + 0.01).astype(np.float16).view(np.uint8).reshape(-1, 2)
            blocks[:, off:off + 2] = halves
        w.add_tensor(f"x.{qt.name}", raw, raw_dtype=qt)
        w.add_tensor(f"expected.{qt.name}", quants.dequantize(raw, qt).astype(np.float32).reshape(2, 512))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    torch.manual_seed(0)
    os.makedirs(f"{OUT}/tiny-llama", exist_ok=True)
    tok = tokenizer()
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger-than-default weights so the logits are not all near zero
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(f"{OUT}/tiny-llama", safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>")
    fast.save_pretrained(f"{OUT}/tiny-llama")
    for extra in ["tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja"]:
        p = f"{OUT}/tiny-llama/{extra}"
        if os.path.exists(p) and extra != "generation_config.json":
            os.remove(p)
    write_gguf(model, cfg, tok, f"{OUT}/tiny-llama.gguf")
    write_quants(f"{OUT}/quants.gguf")

    logits = []
    with torch.no_grad():
        for s in SEQS:
            logits.append(model(torch.tensor([s])).logits[0].tolist())
        # The GGUF must load back in transformers to the same model (checks the permutation).
        back = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="tiny-llama.gguf", dtype=torch.float32).eval()
        gguf_logits = [back(torch.tensor([s])).logits[0].tolist() for s in SEQS]
        diff = (torch.tensor(gguf_logits[0]) - torch.tensor(logits[0])).abs().max()
        assert diff < 0.05, f"GGUF round trip through transformers differs by {diff} (only Q8_0 rounding expected)"
    ref = {
        "generator": "scripts/reference/tiny_fixture.py",
        "sequences": SEQS,
        "logits": logits,
        "gguf_logits": gguf_logits,
        "tokenizer": [{"text": s, "ids": tok.encode(s).ids} for s in STRINGS],
    }
    with open(f"{OUT}/tiny_reference.json", "w", encoding="utf-8") as fh:
        json.dump(ref, fh, ensure_ascii=False)
        fh.write("\n")
    print("wrote tiny fixtures")


if __name__ == "__main__":
    main()
