"""factrace against bergson (EleutherAI), building an index of the same corpus with the same model.

Both tools run as their command-line tools on the same 2,000 fact-world passages and the same
tiny Llama (4.2M parameters), each as one whole command (start-up, tokenising, encoding, writing)
timed wall-clock, alternating, twice. Equal settings: 8192 tokens per batch, no optimizer
correction, float32 (with ``--bf16`` also both in bfloat16), total projection dimension
16,128 = 28 modules × 24 × 24 (bergson `--projection_dim 24`, its per-module two-sided
projection; factrace `--layout modules --dim 16128`), plus factrace's default `layers` layout at
d = 2^14.

bergson must be installed in its own environment (it requires torchvision/torchaudio); point
``--bergson-python`` at that environment's python, e.g. a venv made with
``pip install torch==2.13.0 && pip install --no-deps bergson && pip install accelerate datasets
jaxtyping ml_dtypes natsort scipy peft petname pyarrow pyyaml simple-parsing torchopt
transformers``.

    python benchmarks/peer.py --bergson-python /path/to/bergson-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def prepare(root: Path, n: int) -> tuple[Path, Path, int]:
    from encode import build

    model, tok, passages = build(root / "world", n)
    # Both tools get an 8192-token batch: bergson caps its token batch at the model's context.
    model.config.max_position_embeddings = 8192
    tok.model_max_length = 8192
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    corpus = root / "corpus.jsonl"
    tokens = 0
    with open(corpus, "w") as f:
        for p in passages:
            f.write(json.dumps({"id": p.id, "text": p.text}) + "\n")
            tokens += len(tok(p.text)["input_ids"])
    return root / "model", corpus, tokens


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _peer(name: str) -> str:
    return "bergson-bf16" if name.endswith("-bf16") else "bergson"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bergson-python", required=True)
    ap.add_argument("--passages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also both tools in bfloat16")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, corpus, tokens = prepare(root, args.passages)
        factrace = [sys.executable, "-m", "factrace.cli", "index", "build", "--model", str(model),
                    "--corpus", str(corpus), "--second-moment", "none", "--hessian", "none",
                    "--batch-tokens", "8192", "-q"]
        bergson = [args.bergson_python, "-m", "bergson", "build", "OUT", "--model", str(model),
                   "--dataset", str(corpus), "--projection_dim", "24", "--token_batch_size",
                   "8192", "--overwrite", "true", "--precision"]
        commands = {
            "factrace-modules": factrace + ["--dtype", "float32", "--layout", "modules",
                                            "--dim", "16128"],
            "factrace-layers": factrace + ["--dtype", "float32", "--layout", "layers",
                                           "--dim", "16384"],
            "bergson": bergson + ["fp32"],
        }
        if args.bf16:
            commands["factrace-modules-bf16"] = factrace + ["--dtype", "bfloat16", "--layout",
                                                            "modules", "--dim", "16128"]
            commands["bergson-bf16"] = bergson + ["bf16"]
        times: dict[str, list[float]] = {k: [] for k in commands}
        for r in range(args.rounds):
            for name, cmd in commands.items():
                out = str(root / f"{name}-{r}")
                cmd = [out if c == "OUT" else c for c in cmd]
                if name.startswith("factrace"):
                    cmd += ["--out", out]
                times[name].append(timed(cmd, env))
    best = {k: min(v) for k, v in times.items()}
    result = {"passages": args.passages, "tokens": tokens, "seconds": times,
              "tokens_per_s_best": {k: round(tokens / v) for k, v in best.items()},
              "speedup_vs_bergson": {k: round(best[_peer(k)] / v, 3)
                                     for k, v in best.items() if k.startswith("factrace")}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
