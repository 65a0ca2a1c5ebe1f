#!/usr/bin/env python3
"""The Hugging Face side of `peft bench`: the same training and generation configurations with
PEFT on PyTorch (CPU, float32), printing the same JSON as the Rust commands.

  python benches/hf-peft/bench_peft.py train --method prompt --batch-size 8 --seq-len 128 \
      --virtual-tokens 20 --steps 5 --warmup 1 --threads 2
  python benches/hf-peft/bench_peft.py generate --prompt-len 32 --new-tokens 64 \
      [--adapter DIR] --threads 2

The model is the same GGUF file, dequantised to float32 by transformers. Step = forward +
backward + AdamW step on random token ids with labels = inputs, as in `peft bench train`.
"""
import argparse
import json
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(os.path.abspath(model_path))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    return model, tok


def bench_train(a):
    import torch
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, _ = load(a.model)
    if a.method == "prompt":
        cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.virtual_tokens)
    elif a.method == "prefix":
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.virtual_tokens)
    else:
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.virtual_tokens,
                                 prefix_projection=True, encoder_hidden_size=512)
    model = get_peft_model(model, cfg)
    model.train()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(r * 7919 + t * 104729) % vocab for t in range(a.seq_len)] for r in range(a.batch_size)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for step in range(a.warmup + a.steps):
        start = time.perf_counter()
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= a.warmup:
            times.append((time.perf_counter() - start) * 1e3)
    step_ms = statistics.median(times)
    print(json.dumps({
        "backend": f"pytorch-{torch.__version__}-cpu", "method": a.method, "batch_size": a.batch_size,
        "seq_len": a.seq_len, "virtual_tokens": a.virtual_tokens, "steps": a.steps,
        "step_ms_median": step_ms, "tokens_per_s": a.batch_size * a.seq_len / (step_ms / 1e3),
        "peak_rss_mb": peak_rss_mb(), "threads": a.threads,
    }))


def bench_generate(a):
    import torch
    from peft import PeftModel

    torch.set_num_threads(a.threads)
    model, _ = load(a.model)
    if a.adapter:
        model = PeftModel.from_pretrained(model, a.adapter)
    model.eval()
    vocab = model.config.vocab_size
    prompt = torch.tensor([[100 + t * 7919 % (vocab - 200) for t in range(a.prompt_len)]])
    times = []
    with torch.no_grad():
        for rep in range(a.repeats + 1):
            start = time.perf_counter()
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=a.new_tokens,
                                 min_new_tokens=a.new_tokens, do_sample=False)
            n = out.shape[1] - prompt.shape[1]
            if rep > 0:
                times.append((time.perf_counter() - start) * 1e3 / n)
    ms = statistics.median(times)
    print(json.dumps({
        "backend": f"pytorch-{torch.__version__}-cpu", "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
        "adapter": a.adapter, "ms_per_token_median": ms, "tokens_per_s": 1e3 / ms, "peak_rss_mb": peak_rss_mb(),
        "threads": a.threads,
    }))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    t.add_argument("--method", default="prompt", choices=["prompt", "prefix", "prefix-mlp"])
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seq-len", type=int, default=128)
    t.add_argument("--virtual-tokens", type=int, default=20)
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--warmup", type=int, default=1)
    t.add_argument("--threads", type=int, default=2)
    g = sub.add_parser("generate")
    g.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    g.add_argument("--adapter")
    g.add_argument("--prompt-len", type=int, default=32)
    g.add_argument("--new-tokens", type=int, default=64)
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    bench_train(a) if a.cmd == "train" else bench_generate(a)


if __name__ == "__main__":
    main()
