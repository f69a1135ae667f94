"""The damping study's R_eval from other examples than the scored queries, against the scan's
explicit R^{-1/2} (the same reference as tests/encode/test_whitening.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "encode"))

from damping import other_r_eval  # noqa: E402
from test_whitening import _acc, _data, _explicit  # noqa: E402

from factrace.encode.whitening import TrainBasis  # noqa: E402


@pytest.mark.parametrize("lam", [None, 0.5])
def test_a_question_alone_and_a_held_out_half_are_scored_as_the_scan_would(lam):
    train, queries, rows = _data(4, n_eval=6)
    basis = TrainBasis.fit(_acc(train))
    y, stored = basis.rotate(queries.float()), basis.rows(rows.float())
    single, _, _ = other_r_eval("single", basis, stored, y, 10.0, lam)
    for i in range(len(queries)):
        want, _ = _explicit("mixed", train, queries[i:i + 1], queries[i:i + 1], rows, 10.0, lam)
        np.testing.assert_allclose(single[i], want.numpy()[0], atol=2e-5)
    heldout, _, _ = other_r_eval("heldout", basis, stored, y, 10.0, lam)
    even = np.arange(len(queries)) % 2 == 0
    for scored, fitted in ((even, ~even), (~even, even)):
        want, _ = _explicit("mixed", train, queries[fitted], queries[scored], rows, 10.0, lam)
        np.testing.assert_allclose(heldout[scored], want.numpy(), atol=2e-5)
    assert not np.allclose(single, heldout, atol=1e-3)  # the two R_eval differ
