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
    auto = variant_config("trackstar-auto")
    assert auto.damping == "auto" and auto.replace(variant="trackstar") == variant_config(
        "trackstar", damping="auto", lambda_="auto")


def test_lambda_is_fixed_by_default_and_the_papers_rule_stays_by_name():
    assert EncoderConfig().lambda_ == variant_config("trackstar").lambda_ == 0.5
    assert variant_config("trackstar-paper").lambda_ == "auto"
    assert EncoderConfig(lambda_="0.25").lambda_ == 0.25  # "0.25" from the CLI
    assert EncoderConfig(lambda_=None).lambda_ is None  # as stores written before "auto" say
    for bad in ("half", 1.5, -0.1, float("nan")):
        with pytest.raises(FactraceError, match="--lambda must be a number in"):
            EncoderConfig(lambda_=bad)


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


def test_the_configuration_fingerprint_does_not_depend_on_whether_d_was_resolved():
    # a store built at the default d records the resolved d; reopening it with that d must
    # give the fingerprint the build had (the resolved d is fingerprinted on its own)
    from factrace.config import variant_config

    unset = variant_config("trackstar")
    assert unset.dim is None
    assert unset.replace(dim=16384).fingerprint() == unset.fingerprint()
    assert unset.replace(damping=0.1).fingerprint() != unset.fingerprint()
