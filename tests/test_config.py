"""Named variants and the defaults they resolve to."""

import pytest

from factrace.config import EncoderConfig, variant_config
from factrace.errors import FactraceError


def test_trackstar_damps_hard_and_the_paper_setting_stays_by_name():
    assert variant_config("trackstar").damping == EncoderConfig().damping == 10.0
    paper = variant_config("trackstar-paper")
    assert paper.damping == 0.1 and paper.hessian == "mixed" and paper.layout == "layers"
    assert variant_config("trackstar-paper", damping=3.0).damping == 3.0  # explicit wins
    assert variant_config("trackstar", damping=None).damping == 10.0  # None = not given


def test_fingerprint_tells_damping_and_projection_apart():
    base = EncoderConfig()
    assert base.fingerprint() != base.replace(damping=0.1).fingerprint()
    exact = EncoderConfig(projection="exact", hessian="none")
    assert exact.fingerprint() != base.replace(hessian="none").fingerprint()


def test_unknown_projection_and_bad_aspect_are_refused():
    with pytest.raises(FactraceError, match="--projection"):
        EncoderConfig(projection="sparse")
    with pytest.raises(FactraceError, match="--aspect"):
        EncoderConfig(aspect=0)
