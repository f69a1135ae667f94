"""The Python API takes Passage/Query records or plain mappings, exported from ``factrace``."""

import pytest
import torch
from test_capture import PASSAGES, QUERIES, random_state

import factrace
from factrace.errors import FactraceError, FactraceWarning
from tiny import tiny_loaded


def _encoder():
    loaded = tiny_loaded("llama")
    config = factrace.EncoderConfig(dim=64, second_moment="factored", hessian="none")
    return factrace.Encoder(loaded, config, random_state(loaded.model))


def test_plain_mappings_encode_like_records():
    assert factrace.Passage is type(PASSAGES[0]) and factrace.Query is type(QUERIES[0])
    enc = _encoder()
    ids, psi = enc.encode_passages(PASSAGES)
    ids_m, psi_m = enc.encode_passages([{"id": p.id, "text": p.text} for p in PASSAGES])
    assert ids_m == ids
    torch.testing.assert_close(psi_m, psi)
    qids, psi_q = enc.encode_queries(QUERIES)
    rows = [{"id": q.id, "prompt": q.prompt, "target": q.target, "relation": "P1"}
            for q in QUERIES]
    qids_m, psi_qm = enc.encode_queries(rows)
    assert qids_m == qids
    torch.testing.assert_close(psi_qm, psi_q)


def test_integer_ids_become_strings_and_bad_rows_are_user_errors():
    enc = _encoder()
    ids, _ = enc.encode_passages([{"id": 7, "text": "the cat sat"}])
    assert ids == ["7"]
    with pytest.raises(FactraceError, match="mapping with 'id', 'text'"):
        enc.encode_passages([{"id": 1, "txt": "oops"}])
    with pytest.raises(FactraceError, match="'target' must be a string"):
        enc.encode_queries([{"id": 1, "prompt": "a", "target": 3}])


def test_api_queries_without_the_joining_space_are_repaired_with_a_warning():
    enc = _encoder()
    glued = [factrace.Query("q1", "Paris is the capital of", "France")]
    with pytest.warns(FactraceWarning, match="1 of 1 query targets had no leading space"):
        _, psi = enc.encode_queries(glued)
    _, spaced = enc.encode_queries([factrace.Query("q1", "Paris is the capital of", " France")])
    torch.testing.assert_close(psi, spaced)
