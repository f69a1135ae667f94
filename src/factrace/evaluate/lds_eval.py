"""``eval --lds``: the linear datamodeling score of one or more methods' full scores against
retrained models' measured outputs (:mod:`factrace.evaluate.lds`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from factrace.errors import FactraceError


@dataclass
class LdsEvalConfig:
    """An ``eval --lds`` job."""

    scores: list[str] = field(default_factory=list)
    """Scores files (``.npz``, written by ``scan``/``trace --scores-out`` or ``compare``), one
    per method; a method is named by its file's name without ``.npz``."""
    subsets: str | None = None
    """Subsets JSONL (``{"subset": id, "passages": [...]}``); or generate them with
    ``generate``."""
    outputs: str | None = None
    """Outputs JSONL (``{"subset", "query_id", "output"}``, several rows of one pair — seeds —
    averaged). ``None`` with generated subsets: write the subsets to ``subsets_out`` and stop
    (retrain on them, then come back with the outputs)."""
    output_kind: str = "logprob"
    """``logprob``: output is log p(target | prompt) (higher = target more likely); ``loss``:
    output is the target's loss (the sign is flipped before correlating)."""
    noise_outputs: str | None = None
    """Outputs of a second retraining of (some of) the subsets: reports the noise floor."""
    generate: int | None = None
    """Generate this many random subsets of the scored passages instead of reading them."""
    fraction: float = 0.5
    """Share of passages a generated subset keeps (0.5: TRAK; ≥ 0.75: leave-out)."""
    seed: int = 0
    """Seed of the generated subsets."""
    subsets_out: str | None = None
    """Write the generated subsets here (JSONL)."""
    out: str | None = None
    """LDS results JSON to write (per-query correlations included)."""
    overwrite: bool = False


def _check(cfg: LdsEvalConfig) -> None:
    from factrace.data.outputs import check_output_file

    if not cfg.scores:
        raise FactraceError("--lds needs --scores FILE.npz (one per method; from scan/trace "
                            "--scores-out or compare)")
    if (cfg.subsets is None) == (cfg.generate is None):
        raise FactraceError("--lds needs either --subsets FILE or --lds-subsets M (generated)")
    if cfg.generate is None and cfg.outputs is None:
        raise FactraceError("--lds with --subsets needs --outputs FILE (the retrained models' "
                            "measured outputs)")
    if cfg.generate is not None and cfg.outputs is None and cfg.subsets_out is None:
        raise FactraceError("generated subsets without --outputs: pass --subsets-out FILE to "
                            "write them (then retrain on them and measure the outputs)")
    if cfg.output_kind not in ("logprob", "loss"):
        raise FactraceError(f"--output-kind must be logprob or loss, got {cfg.output_kind!r}")
    names = [Path(p).name.removesuffix(".npz") for p in cfg.scores]
    if len(set(names)) != len(names):
        raise FactraceError("two --scores files have the same name; a method is named by its "
                            "file name")
    for path in (cfg.out, cfg.subsets_out):
        if path:
            check_output_file(path, overwrite=cfg.overwrite)


def evaluate_lds(cfg: LdsEvalConfig) -> dict:
    """LDS ± se of every scores file, and the noise floor when ``noise_outputs`` is given.
    Everything is read and checked before any result is written."""
    from factrace.data.atomic import atomic_write
    from factrace.evaluate.lds import (
        check_outputs_subsets,
        describe,
        lds,
        noise_floor,
        random_subsets,
        read_outputs,
        read_subsets,
        write_subsets,
    )
    from factrace.search.full import read_scores

    _check(cfg)
    methods = {}
    for path in cfg.scores:
        full = read_scores(path)
        methods[Path(path).name.removesuffix(".npz")] = full
    first = next(iter(methods.values()))  # methods may score windows or whole passages
    if cfg.generate is not None:
        from factrace.evaluate.metrics import bare_id

        passages = list(dict.fromkeys(bare_id(d) for d in first.doc_ids))
        subsets = random_subsets(passages, cfg.generate, cfg.fraction, cfg.seed)
    else:
        subsets = read_subsets(cfg.subsets)
    if cfg.outputs is None:
        write_subsets(cfg.subsets_out, subsets)
        return {"subsets_written": cfg.subsets_out, "subsets": len(subsets)}
    sign = 1.0 if cfg.output_kind == "logprob" else -1.0
    outputs = read_outputs(cfg.outputs)
    check_outputs_subsets(outputs, subsets, cfg.outputs)
    results = {name: lds(full.scores, full.query_ids, full.doc_ids, subsets, outputs, sign,
                         cfg.outputs) for name, full in methods.items()}
    record = {"variant": describe(next(iter(results.values()))),
              "output": "log p(target | prompt)" if sign > 0 else "loss (sign flipped)",
              "methods": {name: r.to_dict(per_query=True) for name, r in results.items()}}
    if cfg.noise_outputs:
        again = read_outputs(cfg.noise_outputs)
        check_outputs_subsets(again, subsets, cfg.noise_outputs)
        covered = [s for s in subsets if any(key[0] == s.id for key in again)]
        floor = noise_floor(outputs, again, covered, first.query_ids)
        record["noise_floor"] = {**floor.to_dict(), "subsets": len(covered)}
    if cfg.subsets_out:
        write_subsets(cfg.subsets_out, subsets)
    if cfg.out:
        with atomic_write(cfg.out, "w") as f:
            json.dump(record, f, indent=2)
    return record
