"""What ``FactraceCallback`` adds to a Trainer run: wall time with it against without it.

A Llama of ``--hidden`` × ``--layers`` (random initialisation, vocabulary 4096) trains for
``--steps`` AdamW steps on random tokens, saving a checkpoint every ``--save-steps``; the same
run is made without the callback and with ``FactraceCallback()`` (every checkpoint and the final
model marked; no store), alternating, ``--repeats`` times each. Prints one JSON object with the
median seconds of each and their ratio.

    python benchmarks/trainer_callback.py --steps 40 --save-steps 10 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def run(work: Path, args, callback: bool) -> float:
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from factrace.integrations import FactraceCallback

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=4096, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=128))
    ids = torch.randint(0, 4096, (args.steps * 8, 64))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    out = work / ("with" if callback else "without")
    shutil.rmtree(out, ignore_errors=True)
    training = TrainingArguments(output_dir=str(out), max_steps=args.steps,
                                 save_steps=args.save_steps, per_device_train_batch_size=8,
                                 report_to=[], use_cpu=True, logging_steps=10_000,
                                 disable_tqdm=True, optim="adamw_torch")
    trainer = Trainer(model=model, args=training, train_dataset=data,
                      callbacks=[FactraceCallback()] if callback else [])
    t = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--save-steps", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trainer_callback_"))
    try:
        times = {False: [], True: []}
        for _ in range(args.repeats):
            for callback in (False, True):
                times[callback].append(run(work, args, callback))
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        print(json.dumps({"steps": args.steps, "save_steps": args.save_steps,
                          "hidden": args.hidden, "layers": args.layers,
                          "without_s": round(without, 2), "with_s": round(with_, 2),
                          "ratio": round(with_ / without, 3),
                          "runs": {k: [round(x, 2) for x in v] for k, v in
                                   (("without", times[False]), ("with", times[True]))}}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
