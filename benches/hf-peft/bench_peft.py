#!/usr/bin/env python3
"""The Hugging Face side of `peft bench`: the same training and generation configurations with
PEFT on PyTorch (CPU), printing the same JSON as the Rust commands.

  python benches/hf-peft/bench_peft.py train --method prompt --batch-size 8 --seq-len 128 \
      --virtual-tokens 20 --steps 5 --warmup 1 --threads 2 [--precision f32|autocast-bf16|bf16]
  python benches/hf-peft/bench_peft.py generate --prompt-len 32 --new-tokens 64 \
      [--adapter DIR] --threads 2 [--precision f32|autocast-bf16|bf16]

The model is the same GGUF file, dequantised by transformers. Step = forward + backward + AdamW
step on random token ids with labels = inputs, as in `peft bench train`.

--precision (what a PyTorch user on a CPU with bf16 support would pick from):
  f32            float32 weights and compute (the default; what burn-peft's CPU backend does).
  autocast-bf16  float32 weights; the forward (training: forward and loss; generation: every
                 step) under torch.autocast("cpu", dtype=torch.bfloat16). Backward runs outside
                 autocast, as PyTorch recommends; autograd replays the forward's casts.
  bf16           the base model loaded in torch.bfloat16; the adapter's parameters, their
                 gradients and AdamW's state stay float32. PEFT casts the prompt / prefix to the
                 base model's dtype where it enters the model (`prompts.to(inputs_embeds.dtype)`,
                 `get_prompt(...).to(base_model_torch_dtype)`), a differentiable cast, so the
                 gradient arrives in float32; this script checks that (and forces the adapter to
                 float32 if PEFT ever left it in bf16) and reports the dtypes in the JSON.

Generation with a prefix-tuning adapter does not call generate(): with transformers 5.24.0 and
PEFT 0.21.2, PeftModel.generate() silently drops the prefix (transformers renamed the cache
argument from `past_key_values` to `cache`; PEFT still hands the prefix over under the old name,
and the model keeps generate()'s own empty cache). It decodes exactly as the base model, so a
"prefix adapter" row timed with it would measure the base model.
benches/hf-peft/check_prefix_generate.py shows this, and its output is in
docs/measured/2026-12-05-hf-prefix-generate.txt. With a prefix adapter the script times instead a
greedy loop that does apply it (--prefix-decode loop, the default): PEFT's forward() on the prompt,
which puts the prefix in the cache, then the base model one token at a time with the returned
cache, the logits of the last position only, as generate() does. --prefix-decode cache-generate
times generate() started from a cache that holds the prefix (`cache=peft_model.get_prompt(1)`, an
attention mask over prefix + prompt), which gives the same tokens.
"""
import argparse
import contextlib
import inspect
import json
import math
import os
import resource
import statistics
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# PEFT's forward passes the prefix as `past_key_values`, which transformers 5.24 renames to `cache`
# with a FutureWarning; that renaming is what we rely on in the prefix loop below.
warnings.filterwarnings("ignore", category=FutureWarning)

PRECISIONS = ["f32", "autocast-bf16", "bf16"]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(model_path, precision):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(os.path.abspath(model_path))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    return model, tok


def autocast(precision):
    import torch

    if precision == "autocast-bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def backend_name():
    import torch

    return f"pytorch-{torch.__version__}-cpu"


def bench_train(a):
    import torch
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, _ = load(a.model, a.precision)
    if a.method == "prompt":
        cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.virtual_tokens)
    elif a.method == "prefix":
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.virtual_tokens)
    else:
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.virtual_tokens,
                                 prefix_projection=True, encoder_hidden_size=512)
    model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    # Adapter parameters in float32 whatever the base model's dtype (PEFT 0.21.2 creates them in
    # float32 already; this only matters if a version leaves them in the base model's dtype).
    cast = [p for p in params if p.dtype != torch.float32]
    for p in cast:
        p.data = p.data.float()
    model.train()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(r * 7919 + t * 104729) % vocab for t in range(a.seq_len)] for r in range(a.batch_size)])
    opt = torch.optim.AdamW(params, lr=1e-3)
    times, losses, grad_dtypes = [], [], set()
    for step in range(a.warmup + a.steps):
        start = time.perf_counter()
        with autocast(a.precision):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        out.loss.backward()
        if step == 0:
            grad_dtypes = {str(p.grad.dtype) for p in params if p.grad is not None}
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= a.warmup:
            times.append((time.perf_counter() - start) * 1e3)
        losses.append(float(out.loss))
    if not all(math.isfinite(x) for x in losses):
        sys.exit(f"non-finite loss with --precision {a.precision}: {losses}")
    state_dtypes = {str(v.dtype) for s in opt.state.values() for k, v in s.items() if torch.is_tensor(v) and k != "step"}
    step_ms = statistics.median(times)
    print(json.dumps({
        "backend": backend_name(), "precision": a.precision, "method": a.method, "batch_size": a.batch_size,
        "seq_len": a.seq_len, "virtual_tokens": a.virtual_tokens, "steps": a.steps,
        "step_ms_median": step_ms, "tokens_per_s": a.batch_size * a.seq_len / (step_ms / 1e3),
        "peak_rss_mb": peak_rss_mb(), "threads": a.threads,
        "loss_first": losses[0], "loss_last": losses[-1],
        "base_dtype": str(model.get_base_model().dtype), "adapter_dtypes": sorted({str(p.dtype) for p in params}),
        "adapter_cast_to_f32": bool(cast),
        "grad_dtypes": sorted(grad_dtypes), "optimizer_state_dtypes": sorted(state_dtypes),
    }))


def cache_kw(model):
    """The name the model's forward() takes the KV cache under: `cache` from transformers 5.24 on,
    `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefix_loop(pm, prompt, n, suppress):
    """Greedy decoding that applies the prefix: PEFT's forward() on the prompt (it builds the
    prefix cache, extends the attention mask by the prefix and passes both to the model), then the
    base model one new token at a time with the cache that call returned. As generate() with
    min_new_tokens = max_new_tokens: `suppress` (the end-of-sequence ids) can't be chosen."""
    import torch

    base = pm.get_base_model()
    kw = cache_kw(base)
    p = pm.active_peft_config.num_virtual_tokens
    mask = torch.ones(1, p + prompt.shape[1] + n, dtype=torch.long)
    out = pm(input_ids=prompt, attention_mask=mask[:, p:p + prompt.shape[1]], use_cache=True, logits_to_keep=1)
    tokens = []
    for i in range(n):
        logits = out.logits[:, -1]
        if suppress:
            logits[:, suppress] = -math.inf
        nxt = logits.argmax(-1, keepdim=True)
        tokens.append(int(nxt))
        if i + 1 == n:
            break
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        past = cache.get_seq_length()
        out = base(input_ids=nxt, attention_mask=mask[:, :past + 1], use_cache=True, logits_to_keep=1, **{kw: cache})
    return tokens


def bench_generate(a):
    import torch
    from peft import PeftModel, PeftType

    torch.set_num_threads(a.threads)
    model, _ = load(a.model, a.precision)
    if a.adapter:
        model = PeftModel.from_pretrained(model, a.adapter)
    model.eval()
    vocab = model.config.vocab_size
    prompt = torch.tensor([[100 + t * 7919 % (vocab - 200) for t in range(a.prompt_len)]])
    is_prefix = a.adapter and model.active_peft_config.peft_type == PeftType.PREFIX_TUNING
    decode = a.prefix_decode if is_prefix else "generate"
    eos = model.generation_config.eos_token_id
    suppress = sorted(set(eos if isinstance(eos, (list, tuple)) else [eos])) if eos is not None else []

    def run():
        if decode == "loop":
            return prefix_loop(model, prompt, a.new_tokens, suppress)
        extra, mask = {}, torch.ones_like(prompt)
        if decode == "cache-generate":
            # generate() from a cache that already holds the prefix; the mask covers prefix +
            # prompt, so generate() takes input_ids as the new part and puts the prompt at
            # positions P..P+L-1, as PEFT's forward() does.
            p = model.active_peft_config.num_virtual_tokens
            extra = {cache_kw(model.get_base_model()): model.get_prompt(batch_size=1)}
            mask = torch.ones(1, p + prompt.shape[1], dtype=torch.long)
        gen = model.get_base_model() if decode == "cache-generate" else model
        out = gen.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=a.new_tokens,
                           min_new_tokens=a.new_tokens, do_sample=False, **extra)
        return out[0, prompt.shape[1]:].tolist()

    times = []
    with torch.no_grad(), autocast(a.precision):
        for rep in range(a.repeats + 1):
            start = time.perf_counter()
            tokens = run()
            if rep > 0:
                times.append((time.perf_counter() - start) * 1e3 / len(tokens))
    ms = statistics.median(times)
    print(json.dumps({
        "backend": backend_name(), "precision": a.precision, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
        "adapter": a.adapter, "decode": decode, "ms_per_token_median": ms, "tokens_per_s": 1e3 / ms,
        "peak_rss_mb": peak_rss_mb(), "threads": a.threads,
        "base_dtype": str((model.get_base_model() if a.adapter else model).dtype), "tokens": tokens,
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
    t.add_argument("--precision", default="f32", choices=PRECISIONS)
    g = sub.add_parser("generate")
    g.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    g.add_argument("--adapter")
    g.add_argument("--prompt-len", type=int, default=32)
    g.add_argument("--new-tokens", type=int, default=64)
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--precision", default="f32", choices=PRECISIONS)
    g.add_argument("--prefix-decode", default="loop", choices=["loop", "cache-generate"],
                   help="how a prefix-tuning adapter is decoded (PeftModel.generate() drops the prefix)")
    a = p.parse_args()
    bench_train(a) if a.cmd == "train" else bench_generate(a)


if __name__ == "__main__":
    main()
