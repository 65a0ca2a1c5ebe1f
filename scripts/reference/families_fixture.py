#!/usr/bin/env python3
"""Tiny random models of every supported family, with transformers' and PEFT's values.

For each family (llama3, qwen2, qwen3, gemma3) writes tests/fixtures/families/<family>/:
  * config.json, model.safetensors   a randomly initialised model saved by transformers
                                     (tokenizer.json: the tiny-llama byte-level BPE, shared);
  * model.gguf                       the same weights as llama.cpp's converter writes them
                                     (names, Q/K permutation for `llama`, Gemma norms stored as
                                     1 + w, Llama 3 scaling as `rope_freqs.weight`), all F32;
  * prompt/, prefix/                 a PROMPT_TUNING adapter (RANDOM init, 5 virtual tokens) and a
                                     PREFIX_TUNING adapter (6 virtual tokens, no projection, values
                                     0.5·N(0, 1)) saved by PEFT;
  * prompt_text/ (gemma3)            a TEXT-initialised prompt (PEFT embeds the init text with the
                                     model's scaled embedding);
and tests/fixtures/families/reference.json: logits of every position of each sequence from the
model (eager attention), the largest difference of transformers reading the GGUF back (where
it reads that architecture faithfully: qwen2, gemma3), and from PEFT with each adapter (real positions only).

The shapes are chosen to reach what differs between families: GQA, head_dim != hidden/heads
(qwen3, gemma3), one key/value head (gemma3), sliding-window layers whose window (4) is shorter
than the sequences and than the prefix (gemma3: prefix keys leave the window), Llama 3 RoPE
scaling whose three frequency bands all occur, q/k/v biases (qwen2), random norm weights.

Usage: python scripts/reference/families_fixture.py
"""
import json
import math
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import gguf  # noqa: E402
from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config,
)

OUT = "tests/fixtures/families"
TOKENIZER = "crates/peft-models/tests/fixtures/tiny-llama/tokenizer.json"
SEQS = [[5, 17, 42, 99, 3, 250, 7, 64, 12, 300, 45, 45], [1, 2, 3, 200, 150, 11, 9]]
PROMPT_TOKENS, PREFIX_TOKENS = 5, 6
INIT_TEXT = "The fox jumps."


def configs(vocab):
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, max_position_embeddings=128,
                  rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return {
        "llama3": LlamaConfig(**common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=8, tie_word_embeddings=False, rope_theta=10000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        "qwen2": Qwen2Config(**common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=True, rope_theta=10000.0),
        "qwen3": Qwen3Config(**common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=16, tie_word_embeddings=True, rope_theta=10000.0),
        # Six layers: llama.cpp's fixed gemma3 pattern (every sixth layer global) is transformers'
        # default too, so the GGUF describes the same model.
        "gemma3": Gemma3TextConfig(**common, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1,
                                   head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                                   tie_word_embeddings=True, attn_implementation="eager"),
    }


def randomise(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
            elif "norm" in name:
                # Around 1 for w-scaled norms; around 0 for Gemma's (1 + w).
                p.copy_(torch.randn_like(p) * 0.1 + (0.0 if "gemma" in type(model).__name__.lower() else 1.0))
            else:  # biases
                p.normal_(0, 0.1)


def permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: rotate-half rows -> interleaved pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg):
    # llama.cpp's LlamaModel.generate_extra_tensors for rope_type llama3.
    p = cfg.rope_parameters
    base, dim = p["rope_theta"], cfg.head_dim
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low_wl = p["original_max_position_embeddings"] / p["low_freq_factor"]
    high_wl = p["original_max_position_embeddings"] / p["high_freq_factor"]
    out = []
    for f in freqs.tolist():
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(p["factor"])
        else:
            smooth = (p["original_max_position_embeddings"] / wl - p["low_freq_factor"]) / (
                p["high_freq_factor"] - p["low_freq_factor"])
            out.append(1 / ((1 - smooth) / p["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(family, model, cfg, tok_json, path):
    arch = {"llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3"}[family]
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{family}")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if family == "gemma3":
        w.add_sliding_window(cfg.sliding_window)
    vocab = tok_json["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    specials = {t["content"] for t in tok_json["added_tokens"]}
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok_json["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    shift = 1.0 if family == "gemma3" else 0.0  # llama.cpp stores Gemma norms as 1 + w

    def put(name, t):
        w.add_tensor(name, np.ascontiguousarray(t))

    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("output_norm.weight", sd["model.norm.weight"] + shift)
    if not cfg.tie_word_embeddings:
        put("output.weight", sd["lm_head.weight"])
    if family == "llama3":
        put("rope_freqs.weight", llama3_rope_factors(cfg))
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
             "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    if family == "gemma3":
        names.update({"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                      "post_feedforward_layernorm": "post_ffw_norm"})
    else:
        names["post_attention_layernorm"] = "ffn_norm"
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            for kind in ["weight", "bias"]:
                key = f"model.layers.{i}.{hf}.{kind}"
                if key not in sd:
                    continue
                t = sd[key]
                if family == "llama3" and hf == "self_attn.q_proj":
                    t = permute(t, cfg.num_attention_heads)
                elif family == "llama3" and hf == "self_attn.k_proj":
                    t = permute(t, cfg.num_key_value_heads)
                if "norm" in hf:
                    t = t + shift
                put(f"blk.{i}.{gg}.{kind}", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def all_logits(model, **kw):
    with torch.no_grad():
        return [model(input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s), dtype=torch.long), **kw)
                .logits[0].tolist() for s in SEQS]


def peft_logits(peft_model, skip):
    with torch.no_grad():
        out = []
        for s in SEQS:
            x = torch.tensor([s])
            out.append(peft_model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, skip:].tolist())
        return out


def main():
    torch.manual_seed(0)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    with open(TOKENIZER, encoding="utf-8") as fh:
        tok_json = json.load(fh)
    vocab = len(tok_json["model"]["vocab"])
    reference = {"generator": "scripts/reference/families_fixture.py", "sequences": SEQS,
                 "prompt_tokens": PROMPT_TOKENS, "prefix_tokens": PREFIX_TOKENS,
                 "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                              "peft": __import__("peft").__version__, "gguf": "0.19.0"},
                 "families": {}}
    for family, cfg in configs(vocab).items():
        d = f"{OUT}/{family}"
        model = AutoModelForCausalLM.from_config(cfg).eval()
        randomise(model)
        model.save_pretrained(d, safe_serialization=True)
        for extra in ["generation_config.json"]:
            if os.path.exists(f"{d}/{extra}"):
                os.remove(f"{d}/{extra}")
        shutil.copy(TOKENIZER, f"{d}/tokenizer.json")
        write_gguf(family, model, cfg, tok_json, f"{d}/model.gguf")
        r = {"logits": all_logits(model)}

        # transformers reading the GGUF back checks the writing convention, where transformers
        # reads the architecture faithfully: it ignores llama.cpp's rope_freqs.weight (llama3) and
        # does not map qwen3.attention.key_length (its qwen3 takes head_dim 128).
        if family in ("qwen2", "gemma3"):
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy(f"{d}/model.gguf", f"{tmp}/model.gguf")
                back = AutoModelForCausalLM.from_pretrained(tmp, gguf_file="model.gguf", dtype=torch.float32).eval()
                if family == "gemma3":
                    back.config._attn_implementation = "eager"
                    # transformers' GGUF loader leaves query_pre_attn_scalar at its default (256,
                    # right for the real 270M model); this tiny model's is its head_dim.
                    for layer in back.model.layers:
                        layer.self_attn.scaling = cfg.query_pre_attn_scalar ** -0.5
                gl = all_logits(back)
            diff = max(abs(a - b) for x, y in zip(gl, r["logits"]) for ra, rb in zip(x, y) for a, b in zip(ra, rb))
            assert diff < 1e-4, f"{family}: transformers reads the GGUF {diff} away from the model"
            r["gguf_roundtrip_max_diff"] = diff

        torch.manual_seed(1)
        prompt = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PROMPT_TOKENS,
                                                          prompt_tuning_init=PromptTuningInit.RANDOM)).eval()
        prompt.save_pretrained(f"{d}/prompt")
        r["prompt"] = peft_logits(prompt, PROMPT_TOKENS)
        model = prompt.unload() if hasattr(prompt, "unload") else prompt.base_model

        torch.manual_seed(2)
        prefix = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PREFIX_TOKENS,
                                                          prefix_projection=False)).eval()
        with torch.no_grad():
            emb = prefix.prompt_encoder["default"].embedding.weight
            emb.copy_(torch.randn_like(emb) * 0.5)
        prefix.save_pretrained(f"{d}/prefix")
        r["prefix"] = peft_logits(prefix, 0)
        model = prefix.unload() if hasattr(prefix, "unload") else prefix.base_model

        if family == "gemma3":
            with tempfile.TemporaryDirectory() as tmp:
                PreTrainedTokenizerFast(tokenizer_file=TOKENIZER).save_pretrained(tmp)
                text = get_peft_model(model, PromptTuningConfig(
                    task_type="CAUSAL_LM", num_virtual_tokens=PROMPT_TOKENS,
                    prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=INIT_TEXT,
                    tokenizer_name_or_path=tmp)).eval()
            text.save_pretrained(f"{d}/prompt_text")
            r["prompt_text"] = {"init_text": INIT_TEXT,
                                "embeddings": text.prompt_encoder["default"].embedding.weight.tolist()}
        for sub in ["prompt", "prefix", "prompt_text"]:
            readme = f"{d}/{sub}/README.md"
            if os.path.exists(readme):
                os.remove(readme)
        reference["families"][family] = r
        print(f"{family}: written" + (f", GGUF read back within {r.get('gguf_roundtrip_max_diff'):.2e}"
                                      if "gguf_roundtrip_max_diff" in r else ""))
    with open(f"{OUT}/reference.json", "w", encoding="utf-8") as fh:
        json.dump(reference, fh)
        fh.write("\n")


if __name__ == "__main__":
    main()
