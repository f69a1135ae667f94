"""--engine ray on a local two-worker Ray gives rankings identical to the local engine."""

import pytest

from factrace.config import variant_config
from factrace.run.scan import ScanConfig, scan


def test_ray_two_workers_equals_local(world):
    enc = variant_config("trackstar", dim=256, train_examples=40, batch_tokens=512)
    common = dict(model=world["model"], corpus=world["corpus"], queries=world["queries"],
                  optimizer_state=world["optimizer"], top_k=5, encoder=enc, shard_rows=16,
                  progress=False)
    local = scan(ScanConfig(**common))
    ray = scan(ScanConfig(**common, engine="ray", workers=2))
    assert [r.doc_ids for r in ray.rankings] == [r.doc_ids for r in local.rankings]
    # scores agree to float32 rounding (workers run BLAS on fewer threads than the driver)
    for a, b in zip(ray.rankings, local.rankings, strict=True):
        assert a.scores == pytest.approx(b.scores, rel=1e-5, abs=1e-6)
    assert [r.opponent_ids for r in ray.rankings] == [r.opponent_ids for r in local.rankings]
    assert ray.metadata["fingerprints"] == local.metadata["fingerprints"]
