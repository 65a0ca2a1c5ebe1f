#!/usr/bin/env python3
"""Does Hugging Face's `generate()` apply a prefix-tuning adapter?

  .venv/bin/python benches/hf-peft/check_prefix_generate.py [--model GGUF] [--new-tokens 16] [--threads 2]

The committed reference output (tests/fixtures/peft/peft_reference.json, written by
scripts/reference/peft_fixture.py with transformers 5.24.0 and PEFT 0.21.2) shows
`PeftModel.generate()` returning the same 16 tokens for three different prefix adapters
(`prefix8`, `rust_prefix`, `rust_trained`). This script checks, for each of several prefix
adapters (the committed ones, and fresh ones with and without the MLP projection, seeded, some
with their prefix scaled up so it clearly matters), on SmolLM2 loaded from the GGUF in float32:

  (a) `PeftModel.generate(greedy, max_new_tokens=N)`;
  (b) a manual greedy loop: PEFT's forward() on the prompt (which puts the prefix into the
      cache it passes to the model), then one token at a time through the base model with the
      cache that forward returned;
  (c) the base model without the adapter (generate(), and the same manual loop); and (c')
      the base model's generate() given the attention mask PEFT builds for it (P ones for the
      prefix, then the prompt's), the only input of PEFT's that reaches the model if the prefix
      is dropped;
  (d) PEFT's forward() on the whole sequence at every step, no cache (what the fixture script's
      `greedy` does), as a check of (b);
  (e) `generate()` given the prefix as its starting cache (`PeftModel.get_prompt(1)`) and an
      attention mask that covers prefix + prompt: a way to make generate() apply it.

It prints the tokens, which of them agree, the largest difference of the first step's logits
between PEFT's forward and the base model (and between generate()'s first step and both), and
a conclusion that follows from those numbers. Greedy decoding stops at the end-of-sequence token
as generate() does. The script writes nothing; docs/measured/2026-12-05-hf-prefix-generate.txt
is its output.
"""
import argparse
import copy
import datetime
import inspect
import os
import platform
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHAT_PROMPT = [1, 4093, 198, 5820, 253, 3925, 30, 2, 198, 1, 520, 9531, 198]  # the fixture's prompt ids
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "peft")


def machine_line():
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile"])
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; {have}"


def load_base(model_path):
    import torch
    from transformers import AutoModelForCausalLM

    d, f = os.path.split(os.path.abspath(model_path))
    return AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()


def cache_kw(model):
    """The name under which this transformers passes the KV cache: `cache` from 5.24, before that
    `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def out_cache(out):
    return out["cache"] if "cache" in out else out["past_key_values"]


def eos_ids(model):
    e = model.generation_config.eos_token_id
    return set(e if isinstance(e, (list, tuple)) else [e]) if e is not None else set()


def generate(model, ids, n, **extra):
    """generate(), greedy; returns (new tokens, logits of the first step, warnings raised)."""
    import torch

    x = torch.tensor([ids])
    mask = extra.pop("attention_mask", torch.ones_like(x))
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             return_dict_in_generate=True, output_logits=True, **extra)
    return out.sequences[0, len(ids):].tolist(), out.logits[0][0].double(), [str(w.message) for w in caught]


def manual_loop(first, base, ids, n, eos):
    """Greedy decoding with the cache: `first` (PEFT's forward, or the base model) on the prompt,
    then the base model one token at a time with the cache the previous call returned. Returns
    (tokens, logits of the first step)."""
    import torch

    kw = cache_kw(base)
    x = torch.tensor([ids])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = first(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True)
        first_logits = out.logits[0, -1].double()
        cache, tokens = out_cache(out), []
        nxt = int(out.logits[0, -1].argmax())
        while True:
            tokens.append(nxt)
            if nxt in eos or len(tokens) == n:
                return tokens, first_logits
            past = cache.get_seq_length()
            out = base(input_ids=torch.tensor([[nxt]]), attention_mask=torch.ones(1, past + 1, dtype=torch.long),
                       use_cache=True, **{kw: cache})
            cache = out_cache(out)
            nxt = int(out.logits[0, -1].argmax())


def recompute_loop(model, ids, n, eos):
    """Greedy decoding by forward() on the whole sequence at every step, no cache."""
    import torch

    seq = list(ids)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for _ in range(n):
            x = torch.tensor([seq])
            nxt = int(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].argmax())
            seq.append(nxt)
            if nxt in eos:
                break
    return seq[len(ids):]


def generate_with_prefix_cache(pm, ids, n):
    """(e): generate() on the base model, starting from a cache that already holds the prefix, with
    an attention mask over prefix + prompt. A mask longer than input_ids tells generate() that the
    input is only the new part (it does not cut input_ids down by the cache length), and the
    position ids it derives from the mask put the prompt at P..P+L-1, as PEFT's forward does."""
    import torch

    base = pm.get_base_model()
    p = pm.active_peft_config.num_virtual_tokens
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cache = pm.get_prompt(batch_size=1)
    return generate(base, ids, n, attention_mask=torch.ones(1, p + len(ids), dtype=torch.long),
                    **{cache_kw(base): cache})


def make_adapter(base, name, seed, projection, scale, tokens=10):
    import torch
    from peft import PrefixTuningConfig, get_peft_model

    torch.manual_seed(seed)
    extra = {"prefix_projection": True, "encoder_hidden_size": 512} if projection else {}
    pm = get_peft_model(copy.deepcopy(base), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=tokens, **extra))
    enc = pm.prompt_encoder["default"]
    with torch.no_grad():
        if projection:
            last = enc.transform[-1]  # Linear(encoder_hidden_size -> layers * 2 * token_dim)
            last.weight.mul_(scale)
            last.bias.mul_(scale)
        else:
            enc.embedding.weight.mul_(scale)
    desc = f"fresh, {tokens} slots, {'MLP 512' if projection else 'no MLP'}, seed {seed}"
    return name, desc + (f", prefix ×{scale:g}" if scale != 1 else ", PEFT's init"), pm.eval()


def prefix_stats(pm):
    """RMS of the prefix keys/values the adapter puts into the cache (all layers)."""
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        c = pm.get_prompt(batch_size=1)
        ks = [layer.keys for layer in c.layers]
        vs = [layer.values for layer in c.layers]
    rms = lambda ts: float(torch.sqrt(torch.mean(torch.cat([t.flatten() for t in ts]) ** 2)))
    return rms(ks), rms(vs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import peft
    import torch
    import transformers
    from peft import PeftModel
    from peft.peft_model import PeftModelForCausalLM

    torch.set_num_threads(a.threads)
    n = a.new_tokens
    print("# Does generate() apply a prefix-tuning adapter? (benches/hf-peft/check_prefix_generate.py)")
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    print(f"# command: {env}{' '.join([os.path.relpath(sys.executable, ROOT)] + [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])}")
    print(f"# date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"# machine: {machine_line()}")
    print(f"# versions: python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__} ({os.path.dirname(transformers.__file__)}), peft {peft.__version__}")
    print(f"# model: {os.path.relpath(a.model, ROOT)}, dequantised to float32; {a.threads} threads; greedy, "
          f"max {n} new tokens, stop at EOS")

    base = load_base(a.model)
    eos = eos_ids(base)
    vocab = base.config.vocab_size
    bench_prompt = [100 + t * 7919 % (vocab - 200) for t in range(32)]  # bench_peft.py generate's prompt
    prompts = [("chat prompt of the fixture (13 tokens)", CHAT_PROMPT), ("bench_peft.py prompt (32 tokens)", bench_prompt)]
    kw = cache_kw(base)
    src = inspect.getsource(PeftModelForCausalLM.prepare_inputs_for_generation)
    reads_pkv = 'model_kwargs.get("past_key_values"' in src
    reads_cache = 'model_kwargs.get("cache"' in src or 'model_kwargs["cache"]' in src
    print(f"# transformers passes the KV cache to forward() and prepare_inputs_for_generation() as `{kw}`; "
          f"PEFT's PeftModelForCausalLM.prepare_inputs_for_generation reads `past_key_values`: "
          f"{'yes' if reads_pkv else 'no'}, reads `cache`: {'yes' if reads_cache else 'no'}")
    print()

    base_ref = {}
    for pname, ids in prompts:
        g, g_logits, _ = generate(base, ids, n)
        loop, loop_logits = manual_loop(base, base, ids, n, eos)
        base_ref[pname] = (g, loop_logits, g_logits)
        print(f"base model, {pname}: generate {g}")
        print(f"  manual loop {loop} (equal: {g == loop}); first-step logits generate vs forward max|diff| "
              f"{float((g_logits - loop_logits).abs().max()):.2e}")
    print()

    adapters = []
    for name, desc in [("prefix8", "committed fixture, 8 slots, no MLP, 0.5·N(0,1)"),
                       ("rust_prefix", "committed fixture written by burn-peft, 5 slots, no MLP"),
                       ("rust_trained", "committed fixture trained by burn-peft, 10 slots, MLP")]:
        path = os.path.join(FIXTURES, name)
        if os.path.exists(os.path.join(path, "adapter_config.json")):
            adapters.append((name, desc, PeftModel.from_pretrained(copy.deepcopy(base), path).eval()))
    adapters += [make_adapter(base, "fresh-1", 1, False, 1.0), make_adapter(base, "fresh-2", 2, False, 1.0),
                 make_adapter(base, "fresh-mlp-3", 3, True, 1.0), make_adapter(base, "fresh-x8-4", 4, False, 8.0),
                 make_adapter(base, "fresh-mlp-x8-5", 5, True, 8.0)]

    rows = []
    shown_warning = False
    for name, desc, pm in adapters:
        krms, vrms = prefix_stats(pm)
        print(f"== {name}: {desc}; prefix RMS keys {krms:.3f}, values {vrms:.3f}")
        for pname, ids in prompts:
            gen, gen_logits, caught = generate(pm, ids, n)
            loop, peft_logits = manual_loop(pm, pm.get_base_model(), ids, n, eos)
            rec = recompute_loop(pm, ids, n, eos)
            fixed, fixed_logits, _ = generate_with_prefix_cache(pm, ids, n)
            base_tokens, base_logits, base_gen_logits = base_ref[pname]
            d_peft_base = float((peft_logits - base_logits).abs().max())
            # generate() computes the logits of the last position only, forward() of all: compare
            # generate() with generate() (bit-identical if the prefix is dropped), forward with forward.
            d_gen_base = float((gen_logits - base_gen_logits).abs().max())
            p = pm.active_peft_config.num_virtual_tokens
            masked, masked_logits, _ = generate(pm.get_base_model(), ids, n,
                                                attention_mask=torch.ones(1, p + len(ids), dtype=torch.long))
            d_gen_masked = float((gen_logits - masked_logits).abs().max())
            d_gen_peft = float((gen_logits - peft_logits).abs().max())
            d_fixed_peft = float((fixed_logits - peft_logits).abs().max())
            print(f"  {pname}")
            print(f"    first-step logits max|diff|: PEFT forward vs base {d_peft_base:.3f}; generate() vs base's "
                  f"generate() {d_gen_base:.2e}, vs (c') {d_gen_masked:.2e}; generate() vs PEFT forward {d_gen_peft:.3f}; "
                  f"(e) vs PEFT forward {d_fixed_peft:.2e}")
            print(f"    (a) PeftModel.generate()         {gen}")
            print(f"    (b) manual loop, PEFT forward+cache {loop}")
            print(f"    (d) PEFT forward, recomputed     {rec}")
            print(f"    (e) generate(), prefix as cache  {fixed}")
            print(f"    (c) base model                   {base_tokens}")
            print(f"    (c') base, PEFT's P+L mask       {masked}")
            print(f"    (a)==(c) {gen == base_tokens}  (a)==(b) {gen == loop}  (b)==(d) {rec == loop}  "
                  f"(e)==(b) {fixed == loop}  (b)==(c) {loop == base_tokens}")
            if caught and not shown_warning:
                msgs = sorted({m.split(". Using")[0][:160] for m in caught})
                print("    warnings raised inside PeftModel.generate(): " + " | ".join(msgs))
                shown_warning = True
            rows.append(dict(name=name, prompt=pname, gen_eq_base=gen == base_tokens, gen_eq_loop=gen == loop,
                             loop_eq_rec=loop == rec, fixed_eq_loop=fixed == loop, loop_eq_base=loop == base_tokens,
                             d_peft_base=d_peft_base, d_gen_base=d_gen_base, d_fixed_peft=d_fixed_peft,
                             d_gen_masked=d_gen_masked, gen_eq_masked=gen == masked))
        print()

    total = len(rows)
    same_as_base = sum(r["gen_eq_base"] for r in rows)
    logits_as_base = sum(r["d_gen_masked"] == 0.0 for r in rows)
    prefix_matters = sum(not r["loop_eq_base"] for r in rows)
    print("== summary")
    print(f"cases (adapter × prompt): {total}")
    print(f"PEFT forward's first-step logits differ from the base model's in {sum(r['d_peft_base'] > 1e-3 for r in rows)}"
          f"/{total} (max|diff| from {min(r['d_peft_base'] for r in rows):.3f} to {max(r['d_peft_base'] for r in rows):.3f});"
          f" the prefix changes the greedy tokens (b vs c) in {prefix_matters}/{total}")
    print(f"(a) PeftModel.generate() gives the base model's tokens in {same_as_base}/{total}, its first-step logits "
          f"are within {max(r['d_gen_base'] for r in rows):.2e} of the base model's generate() and bit-identical to (c') "
          f"in {logits_as_base}/{total} (a mask with P more leading ones shifts the positions by P; RoPE scores depend "
          f"on differences of positions, so only rounding changes); it equals the manual loop in "
          f"{sum(r['gen_eq_loop'] for r in rows)}/{total}")
    print(f"(b) manual loop over the cache equals (d) forward recomputed in {sum(r['loop_eq_rec'] for r in rows)}/{total}")
    print(f"(e) generate() with the prefix as its starting cache equals (b) in {sum(r['fixed_eq_loop'] for r in rows)}"
          f"/{total} (first-step logits max|diff| ≤ {max(r['d_fixed_peft'] for r in rows):.2e})")
    ignored = same_as_base == total and logits_as_base == total
    applied = sum(r["gen_eq_loop"] for r in rows) == total
    print()
    if ignored:
        print(f"CONCLUSION: with transformers {transformers.__version__} and peft {peft.__version__}, "
              "PeftModel.generate() does NOT apply the prefix: every case decodes exactly as the base model, its "
              "first-step logits bit-identical to the base model's generate() given PEFT's extended attention mask, "
              "while PEFT's forward() does apply it.")
        if kw == "cache":
            print("WHY: transformers 5.24 renamed the cache argument of generate(), prepare_inputs_for_generation() "
                  "and the models' forward() from `past_key_values` to `cache` (the old name kept as a deprecated alias). "
                  "generate() now always creates an empty DynamicCache and passes it as `cache`. PEFT 0.21.2's "
                  "PeftModelForCausalLM.prepare_inputs_for_generation still looks for `past_key_values`, finds none, "
                  "so it treats every step as the prefill and stores the prefix cache under `past_key_values`; "
                  "LlamaForCausalLM.forward receives both, and its deprecate_kwarg wrapper keeps `cache` and drops "
                  "`past_key_values` (the FutureWarning 'Both `past_key_values` and `cache` are set ... ignoring "
                  "deprecated `past_key_values`'). The model runs on generate()'s empty cache: no prefix. PEFT's "
                  "forward() is not affected: there `past_key_values` is the only cache argument and is renamed to "
                  "`cache`.")
        print("WORKAROUND (e): call generate() with the prefix as the starting cache, "
              "`cache=peft_model.get_prompt(batch_size=1)` (`past_key_values=` before transformers 5.24), and an "
              "attention mask of ones over prefix + prompt (length P + L).")
    elif applied:
        print(f"CONCLUSION: with transformers {transformers.__version__} and peft {peft.__version__}, "
              "PeftModel.generate() applies the prefix: it decodes as the manual loop over PEFT's forward and cache in "
              "every case.")
    else:
        print("CONCLUSION: mixed; see the cases above.")


if __name__ == "__main__":
    main()
