#!/usr/bin/env python3
"""Reference values for the parity tests of a real GGUF model, from Hugging Face transformers.

transformers dequantises the same GGUF file (through gguf-py) to float32, so its logits are the
reference for ours. Writes OUT (default crates/peft-models/tests/fixtures/smollm2_reference.json):
  * tokenizer: ids of varied strings (encode) and their decoded text;
  * prompts: ids, logits at the last prompt position (the 20 largest, and every 37th vocabulary
    id), and 16 greedy tokens.

For a Gemma model (its tokenizer has `<start_of_turn>`) the strings gain more scripts, code and
Gemma's chat markers, and the chat prompt uses Gemma's turn format.

Usage: python scripts/reference/model_fixture.py models/SmolLM2-135M-Instruct.Q4_1.gguf
       python scripts/reference/model_fixture.py models/gemma-3-270m-q4_k_m.gguf \
           crates/peft-models/tests/fixtures/gemma3_270m_reference.json
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

STRINGS = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "12345",
    "I have 12 apples and 3.5 pears",
    "In 1969, Apollo 11 landed; 2,147,483,647 is 2^31-1.",
    "  leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between",
    "tabs\tand\ttabs",
    "line one\nline two\n\nline four",
    "\n\n\n",
    "   \n  \t  \n",
    "héllo wörld",
    "naïve café résumé",
    "日本語のテキスト",
    "中文测试，标点！",
    "Привет, мир",
    "مرحبا بالعالم",
    "emoji 🤗🚀✨ mix",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n-1) + fibonacci(n-2)",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "don't won't I'll you're we've they'd",
    "URL: https://example.com/path?q=1&r=two#frag",
    "email@example.org",
    "CamelCaseIdentifier snake_case_identifier",
    "$100.00 (≈ €92)",
    "a",
    "",
    "The year 2024 had 366 days.",
    "<|endoftext|>",
    "x = [1, 2, 3]; y = {'a': 1}",
    "Ünïcödé ßtraße",
]

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "<|im_start|>user\nWhat is the largest planet in the Solar System?<|im_end|>\n<|im_start|>assistant\n",
]

# Multilingual and code strings, and Gemma's chat markers (Gemma fixtures only).
GEMMA_STRINGS = [
    "नमस्ते दुनिया, आप कैसे हैं?",
    "안녕하세요 세계",
    "สวัสดีชาวโลก",
    "Γειά σου Κόσμε",
    "Witaj świecie, zażółć gęślą jaźń",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{v:?}\");\n}",
    '{"key": [1, 2.5, null], "nested": {"a": true}}',
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name;",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after an explicit bos",
    "\t\tindented\n        with spaces",
]
GEMMA_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "<start_of_turn>user\nWhat is the largest planet in the Solar System?<end_of_turn>\n<start_of_turn>model\n",
]


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    out = sys.argv[2] if len(sys.argv) > 2 else "crates/peft-models/tests/fixtures/smollm2_reference.json"
    d, f = os.path.split(os.path.abspath(gguf_path))
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    gemma = "<start_of_turn>" in tok.get_vocab()
    strings = STRINGS + GEMMA_STRINGS if gemma else STRINGS
    prompts_text = GEMMA_PROMPTS if gemma else PROMPTS

    tokenizer = []
    for s in strings:
        ids = tok.encode(s)
        tokenizer.append({"text": s, "ids": ids, "decoded": tok.decode(ids)})

    prompts = []
    vocab = model.config.vocab_size
    sample_ids = list(range(0, vocab, 37))
    for p in prompts_text:
        ids = tok.encode(p)
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0, -1].double()
            gen = model.generate(x, max_new_tokens=16, do_sample=False)
        top = torch.topk(logits, 20)
        prompts.append({
            "prompt": p,
            "ids": ids,
            "top_logits": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
            "sampled_logits": [float(logits[i]) for i in sample_ids],
            "greedy": gen[0, len(ids):].tolist(),
        })

    fixture = {
        "generator": "scripts/reference/model_fixture.py",
        "model": f,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "sample_stride": 37,
        "tokenizer": tokenizer,
        "prompts": prompts,
    }
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(fixture, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
