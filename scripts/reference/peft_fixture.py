#!/usr/bin/env python3
"""Golden values from Hugging Face PEFT on the real SmolLM2 (transformers dequantises the GGUF).

Writes tests/fixtures/peft/:
  * prompt_text8/   a PROMPT_TUNING adapter, 8 virtual tokens, TEXT init, saved by PEFT;
  * prefix8/        a PREFIX_TUNING adapter, 8 virtual tokens, no projection, saved by PEFT
                    (a fixed seeded prefix, scaled to 0.5·N(0,1));
  * peft_reference.json   for each adapter (and for the adapters saved by burn-peft in
                    rust_prompt/ and rust_prefix/, when present): the logits at the last real
                    prompt position (20 largest and every 37th id) and up to 16 greedy tokens
                    decoded with PEFT's forward() (see `greedy` for why not generate());
                    plus the TEXT-init token ids.

The rust_* adapters are written by `cargo test --test peft_golden -- --ignored write_rust_adapters`;
this script then checks that PEFT loads them, and records PEFT's logits with them, which the
Rust tests compare against (the round trip in both directions).

Usage: python scripts/reference/peft_fixture.py models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

OUT = "tests/fixtures/peft"
PROMPT = "<|im_start|>user\nName a planet.<|im_end|>\n<|im_start|>assistant\n"
INIT_TEXT = "Answer briefly:"
STRIDE = 37


def load_base(d, f):
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    return model.eval()


def greedy(peft_model, ids, n=16, eos=2):
    """Greedy decoding by PEFT's forward(), recomputing the whole sequence at every step.

    PEFT 0.21.2's generate() with transformers 5.24 disagrees with its own forward() for prompt
    and prefix tuning (its first token is not even the argmax of forward's logits for a prefix
    adapter), so the reference is the decoding that forward() defines; generate()'s output is
    kept as `peft_generate` for the record.
    """
    seq = list(ids)
    for _ in range(n):
        x = torch.tensor([seq])
        nxt = int(peft_model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].argmax())
        seq.append(nxt)
        if nxt == eos:
            break
    return seq[len(ids):]


def record(peft_model, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = peft_model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].double()
        gen = peft_model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False)
        tokens = greedy(peft_model, ids)
    top = torch.topk(logits, 20)
    return {
        "top_logits": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
        "sampled_logits": [float(logits[i]) for i in range(0, logits.shape[0], STRIDE)],
        "greedy": tokens,
        "peft_generate": gen[0, len(ids):].tolist(),
    }


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    ids = tok.encode(PROMPT)
    result = {"generator": "scripts/reference/peft_fixture.py", "prompt": PROMPT, "prompt_ids": ids,
              "sample_stride": STRIDE, "versions": {"peft": __import__("peft").__version__,
                                                    "transformers": __import__("transformers").__version__}}

    # Prompt tuning, TEXT init.
    cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8, prompt_tuning_init="TEXT",
                             prompt_tuning_init_text=INIT_TEXT, tokenizer_name_or_path=d,
                             tokenizer_kwargs={"gguf_file": f})
    pm = get_peft_model(load_base(d, f), cfg).eval()
    init_ids = tok(INIT_TEXT)["input_ids"]
    init_ids = (init_ids * math.ceil(8 / len(init_ids)))[:8]
    emb = pm.prompt_encoder["default"].embedding.weight.detach()
    word = pm.get_base_model().get_input_embeddings().weight.detach()
    assert torch.equal(emb, word[init_ids]), "TEXT init is not the embedding of the repeated text ids"
    pm.save_pretrained(f"{OUT}/prompt_text8")
    result["prompt_text8"] = {"init_text": INIT_TEXT, "init_ids": init_ids, **record(pm, ids)}

    # Prefix tuning, no projection, fixed seeded prefix.
    cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8)
    pm = get_peft_model(load_base(d, f), cfg).eval()
    g = torch.Generator().manual_seed(1234)
    w = pm.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        w.copy_(torch.randn(w.shape, generator=g) * 0.5)
    pm.save_pretrained(f"{OUT}/prefix8")
    result["prefix8"] = record(pm, ids)

    # Adapters written by burn-peft: PEFT must load them; their logits are the round-trip check.
    for name in ["rust_prompt", "rust_prefix", "rust_trained"]:
        path = f"{OUT}/{name}"
        if os.path.exists(f"{path}/adapter_config.json"):
            pm = PeftModel.from_pretrained(load_base(d, f), path).eval()
            result[name] = record(pm, ids)
        else:
            print(f"note: {path} not found; run the Rust writer first for the round trip")

    with open(f"{OUT}/peft_reference.json", "w", encoding="utf-8") as fh:
        json.dump(result, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    print(f"wrote {OUT}/peft_reference.json")


if __name__ == "__main__":
    main()
