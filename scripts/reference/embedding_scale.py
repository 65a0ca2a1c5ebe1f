#!/usr/bin/env python3
"""The scale of SmolLM2's token embeddings, against PEFT's RANDOM prompt init (N(0, 1)).

docs/methods.md quotes the ratio this prints. transformers dequantises the GGUF (gguf-py) as the
parity fixtures do.

Usage: python scripts/reference/embedding_scale.py models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else "models/SmolLM2-135M-Instruct.Q4_1.gguf"
d, f = os.path.split(os.path.abspath(path))
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
table = model.get_input_embeddings().weight.detach().double()
std, rms = table.std().item(), table.pow(2).mean().sqrt().item()
row_norm = table.norm(dim=1).mean().item()
print(f"embedding table {tuple(table.shape)}: std {std:.5f}, rms {rms:.5f}, mean row norm {row_norm:.4f}")
print(f"N(0, 1) (PEFT's RANDOM init): std 1, expected row norm {table.shape[1] ** 0.5:.2f}")
print(f"ratio of standard deviations N(0, 1) / table: {1 / std:.1f}")
