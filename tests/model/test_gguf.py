"""GGUF models: a tiny Llama written as llama.cpp writes it (``ggufdir.py``, independent of
transformers' reader) loads as the same model as its Hugging Face directory, encodes the same,
has a fingerprint of its own, and bad files are one-line errors."""

import json
import shutil

import pytest
import torch

from factrace.config import variant_config
from factrace.data.corpus import iter_corpus
from factrace.data.io import read_queries
from factrace.encode.encoder import Encoder
from factrace.errors import FactraceError
from factrace.model.load import load_model, model_fingerprint
from ggufdir import write_llama_gguf


@pytest.fixture(scope="module")
def gguf_file(world, tmp_path_factory):
    # written next to nothing else: a GGUF beside a model directory is tested on its own
    return write_llama_gguf(world["model"], tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_gguf_loads_the_weights_and_tokenizer_of_its_directory(world, gguf_file):
    hf = load_model(world["model"], "cpu", "float32")
    gg = load_model(gguf_file, "cpu", "float32")
    assert type(gg.model) is type(hf.model)
    a, b = hf.model.state_dict(), gg.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:  # float32 written, float32 read, the rotary permutation undone exactly
        assert torch.equal(a[name], b[name]), name
    for row in world["rows"]:
        assert hf.tokenizer(row["text"])["input_ids"] == gg.tokenizer(row["text"])["input_ids"]
    assert gg.pad_id == hf.pad_id and gg.max_length == hf.max_length
    assert gg.path == gguf_file


def test_gguf_encodes_as_its_directory(world, gguf_file):
    cfg = variant_config("trackstar", dim=256, train_examples=40, batch_tokens=512)
    passages = list(iter_corpus(world["corpus"]))
    queries = read_queries(world["queries"])
    out = {}
    for key, model in (("hf", world["model"]), ("gguf", str(gguf_file))):
        enc = Encoder.load(model, world["optimizer"], cfg)
        enc.fit_hessian(passages[:40], queries)
        out[key] = (enc.encode_passages(passages), enc.encode_queries(queries), enc)
    (ids_a, psi_a), (qids_a, q_a), enc_a = out["hf"]
    (ids_b, psi_b), (qids_b, q_b), enc_b = out["gguf"]
    assert ids_a == ids_b and qids_a == qids_b
    torch.testing.assert_close(psi_b, psi_a, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(q_b, q_a, atol=2e-5, rtol=1e-4)
    assert enc_b.coverage.to_dict() == enc_a.coverage.to_dict()
    # the model fingerprint is the file's (and the tokenizer's is of the tokenizer transformers
    # rebuilds from the file's metadata: it tokenises the same, above, but is spelled otherwise)
    fa, fb = enc_a.fingerprints(), enc_b.fingerprints()
    assert fa["encoder"] == fb["encoder"] and fa["model"] != fb["model"]


def test_gguf_beside_another_models_files_loads_only_itself(world, gguf_file, tmp_path):
    # a directory with another model's config and tokenizer files, and the GGUF among them
    folder = shutil.copytree(world["model"], tmp_path / "mixed")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    tokenizer_config = folder / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({**json.loads(tokenizer_config.read_text()),
                                            "bos_token": None, "pad_token": None}))
    loaded = load_model(shutil.copy(gguf_file, folder / "tiny.gguf"), "cpu", "float32")
    assert loaded.model.config.num_hidden_layers == 2  # the GGUF's, not the directory's
    assert loaded.tokenizer.bos_token == "<s>" and loaded.tokenizer.pad_token == "<pad>"


def test_gguf_fingerprint_follows_the_file(gguf_file, tmp_path):
    first = model_fingerprint(load_model(gguf_file, "cpu", "float32"))
    copy = shutil.copy(gguf_file, tmp_path / "tiny.gguf")
    assert model_fingerprint(load_model(copy, "cpu", "float32")) == first
    data = bytearray(gguf_file.read_bytes())
    data[-8:-4] = (torch.tensor([1.5]).numpy().tobytes())  # one weight of the last tensor
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(bytes(data))
    assert model_fingerprint(load_model(changed, "cpu", "float32")) != first


def _one_line_error(path, match):
    with pytest.raises(FactraceError, match=match) as caught:
        load_model(path, "cpu", "float32")
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_bad_gguf_files_are_one_line_errors(gguf_file, tmp_path):
    _one_line_error(tmp_path / "missing.gguf", "no such GGUF file")
    (tmp_path / "text.gguf").write_text("not a model\n")
    _one_line_error(tmp_path / "text.gguf", "not a GGUF file")
    data = gguf_file.read_bytes()
    (tmp_path / "header.gguf").write_bytes(data[:200])  # cut inside the metadata
    _one_line_error(tmp_path / "header.gguf", "corrupt or truncated GGUF file")
    (tmp_path / "half.gguf").write_bytes(data[:len(data) // 2])  # cut inside the tensors
    _one_line_error(tmp_path / "half.gguf", "corrupt or truncated GGUF file")
    (tmp_path / "dir").mkdir()
    _one_line_error(tmp_path / "dir", "not a Hugging Face model directory")


def test_gguf_of_an_architecture_transformers_cannot_load_names_it(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv6")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    message = _one_line_error(path, "could not load this GGUF model")
    assert "'rwkv6'" in message
