"""Time of each step of the R fit at one geometry (random p with a decaying spectrum).

    python benchmarks/r_fit.py [--blocks 4 --size 4096 --train 2048 --eval 300]

The default is the demo's geometry: a 2-layer model's ``layers`` layout at d = 2^14 gives 4
blocks of 4096. Prints the accumulation, the two spectra behind automatic λ, the mixture's
eigendecomposition, and R^{-1/2} at two dampings from one decomposition.
"""

from __future__ import annotations

import argparse
import time

import torch

from factrace.encode.hessian import (
    RAccumulator,
    decompose,
    descending_spectrum,
    eigh_blocks,
    whiten,
)


def timed(label, fn):
    t = time.perf_counter()
    out = fn()
    print(f"{label:<40} {time.perf_counter() - t:6.1f} s", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--train", type=int, default=2048)
    ap.add_argument("--eval", type=int, default=300)
    args = ap.parse_args()
    torch.manual_seed(0)
    d = args.blocks * args.size
    spans = [(i * args.size, args.size) for i in range(args.blocks)]
    p = torch.randn(args.train, d) * torch.linspace(0.01, 1, d)
    q = torch.randn(args.eval, d)
    r_train, r_eval = RAccumulator(spans), RAccumulator(spans)
    timed("accumulate R_train and R_eval", lambda: (r_train.add(p), r_eval.add(q)))
    train, evals = r_train.matrices(), r_eval.matrices()
    timed("spectrum of R_train (for λ)", lambda: descending_spectrum(train))
    timed("spectrum of R_eval (for λ)", lambda: descending_spectrum(evals))
    timed("eigendecomposition of one R", lambda: eigh_blocks(train))
    dec = timed("decompose (mixed, automatic λ)", lambda: decompose("mixed", r_train, r_eval))
    for eta in (10.0, 0.1):
        timed(f"R^-1/2 at η = {eta:g} from it", lambda eta=eta: whiten(dec, eta))


if __name__ == "__main__":
    main()
