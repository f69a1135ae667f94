"""--engine ray on a local two-worker Ray gives rankings identical to the local engine."""

import pytest
import torch

from factrace.config import variant_config
from factrace.run.scan import ScanConfig, scan


@pytest.mark.slow  # starts a local Ray cluster and scans twice
def test_ray_two_workers_equals_local(world):
    enc = variant_config("trackstar", dim=256, train_examples=40, batch_tokens=512)
    common = dict(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                  optimizer_state=world["optimizer"], top_k=5, encoder=enc, shard_rows=16,
                  progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker: then every engine does the same arithmetic
    try:
        local = scan(ScanConfig(**common))
        ray = scan(ScanConfig(**common, engine="ray", workers=2))
    finally:
        torch.set_num_threads(threads)
    assert [r.doc_ids for r in ray.rankings] == [r.doc_ids for r in local.rankings]
    assert [r.scores for r in ray.rankings] == [r.scores for r in local.rankings]
    assert [r.opponent_ids for r in ray.rankings] == [r.opponent_ids for r in local.rankings]
    assert ray.metadata["fingerprints"] == local.metadata["fingerprints"]
