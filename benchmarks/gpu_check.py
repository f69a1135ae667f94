"""Encodings on an accelerator against float32 on the CPU, and the automatic token budget there.

Encodes the same fact-world passages with the same tiny Llama (factored correction, no R, unit
norm) on the CPU in float32 and on ``--device`` in float32 and bfloat16 (automatic token budget),
prints the cosine of each example's encodings to the CPU's and the budgets the device ran with,
and exits non-zero if float32 differs (min cosine < 0.999) or bfloat16 drifts (median < 0.98).

    python benchmarks/gpu_check.py --device cuda
    python benchmarks/gpu_check.py --device cpu      # a dry run of the script itself
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

from encode import build, random_state
from factrace.config import EncoderConfig
from factrace.encode.encoder import Encoder
from factrace.model.load import LoadedModel


def encode(model, tokenizer, passages, device, dtype, state):
    model = copy.deepcopy(model).to(device, dtype)
    loaded = LoadedModel(model, tokenizer, None)
    config = EncoderConfig(dim=1 << 14, layout="layers", second_moment="factored",
                           hessian="none")
    enc = Encoder(loaded, config, state)
    budgets = []
    ids, psi = [], []
    for batch_ids, p in enc.encode(enc.tokenize_passages(passages)):
        budgets.append(enc.budget()())
        ids += batch_ids
        psi.append(p.float().cpu())
    order = {i: n for n, i in enumerate(ids)}
    psi = torch.cat(psi)[[order[p.id] for p in passages]]
    return psi, budgets


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--passages", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, passages = build(Path(tmp), args.passages)
    state = random_state(model)
    reference, _ = encode(model, tokenizer, passages, "cpu", torch.float32, state)
    report, ok = {"device": args.device}, True
    for dtype, floor, stat in ((torch.float32, 0.999, "min"), (torch.bfloat16, 0.98, "median")):
        psi, budgets = encode(model, tokenizer, passages, args.device, dtype, state)
        cos = (psi * reference).sum(1)  # both unit norm
        value = float(getattr(cos, stat)())
        ok &= value >= floor
        report[str(dtype)] = {"cos_min": round(float(cos.min()), 6),
                              "cos_median": round(float(cos.median()), 6),
                              f"required_{stat}": floor, "budgets": sorted(set(budgets))}
    print(json.dumps(report, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
