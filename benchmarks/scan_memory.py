"""Peak RSS of `factrace scan` over N passages: memory must not grow with the corpus.

Generates fact-world corpora of each size, builds one tiny Llama directory (random weights and a
random AdamW-like second moment: memory does not depend on training), then runs
`/usr/bin/time -v factrace scan ...` on each corpus and prints peak RSS and the ratio to the
smallest.

    python benchmarks/scan_memory.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def make_model(root: Path, corpus: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer

    from factrace.data.corpus import iter_corpus
    from factrace.factworld.tokenizer import train_tokenizer

    texts = [p.text for _, p in zip(range(5000), iter_corpus(corpus), strict=False)]
    tok = train_tokenizer(texts, vocab_size=1024, model_max_length=128)
    out = root / "model"
    tok.save_pretrained(out)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(out)
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if n in decay], "weight_decay": 0.01},
                             {"params": [p for n, p in named if n not in decay],
                              "weight_decay": 0.0}])
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    opt.step()
    torch.save(opt.state_dict(), out / "optimizer.pt")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=4096)
    args = ap.parse_args()
    from factrace.factworld.generate import generate_world
    from factrace.factworld.world import WorldConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        worlds = {n: generate_world(root / f"w{n}", WorldConfig(n_passages=n, n_queries=100))
                  for n in args.sizes}
        model = make_model(root, worlds[max(args.sizes)].corpus)
        results = {}
        for n, files in worlds.items():
            cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "factrace.cli", "scan",
                   "--model", str(model), "--optimizer-state", str(model / "optimizer.pt"),
                   "--corpus", str(files.corpus), "--queries", str(files.queries),
                   "--out", str(root / f"r{n}.jsonl"), "--dim", str(args.dim), "-q"]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
            wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr)[1]
            # the adaptive CPU budget resets the kernel's peak counter batch by batch, so
            # /usr/bin/time reports the peak since the last batch began; the scan keeps the
            # run's own (factrace.encode.budget.peak_rss)
            meta = json.loads(Path(str(root / f"r{n}.jsonl") + ".meta.json").read_text())
            peak = meta.get("peak_rss_bytes")
            results[n] = {"peak_rss_mib": round((peak or rss * 1024) / 2**20, 1),
                          "time_v_max_rss_mib": round(rss / 1024, 1), "wall": wall}
        base = results[min(args.sizes)]["peak_rss_mib"]
        for r in results.values():
            r["ratio_to_smallest"] = round(r["peak_rss_mib"] / base, 3)
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
