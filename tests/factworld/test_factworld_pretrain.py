"""Tiny-model pretraining on the fact world: the saved directory, the optimizer state, the
cache, the schedule and the fact-accuracy measurement."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import factrace.factworld.pretrain as pretrain_module
from factrace.data.records import Query
from factrace.errors import FactraceError
from factrace.factworld.accuracy import fact_accuracy, greedy_hits
from factrace.factworld.generate import generate_world
from factrace.factworld.pretrain import (
    PretrainConfig,
    build_optimizer,
    learning_rate_at,
    pretrain,
    read_queries,
    training_inputs,
)
from factrace.factworld.world import WorldConfig

TINY = PretrainConfig(
    vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
    max_length=64, epochs=2, batch_size=16, warmup_steps=3, learning_rate=3e-3,
    weight_decay=0.05, num_threads=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    files = generate_world(root / "world", WorldConfig(n_passages=150, n_queries=30, seed=5))
    out = pretrain(files.corpus, files.queries, root / "model", TINY, progress=False)
    return files, out


@pytest.mark.slow
def test_model_directory_loads_with_auto_classes(trained):
    files, out = trained
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama"
    assert (out / "model.safetensors").is_file()
    assert tokenizer.pad_token_id is not None and tokenizer.bos_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.bos_token_id
    assert tokenizer.model_max_length == TINY.max_length
    ids = tokenizer("Ana Bel was born in")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer(" Sarn", add_special_tokens=False)["input_ids"][0] != tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Ana Bel was born in"
    assert model.config.vocab_size == len(tokenizer)
    assert not list(out.parent.glob(".model.*"))


@pytest.mark.slow
def test_optimizer_state_follows_the_trainer_convention(trained):
    _, out = trained
    model = AutoModelForCausalLM.from_pretrained(out)
    state = torch.load(out / "optimizer.pt", weights_only=True)
    groups = state["param_groups"]
    assert len(groups) == 2
    assert groups[0]["weight_decay"] == TINY.weight_decay and groups[1]["weight_decay"] == 0.0
    names = [n for n, _ in model.named_parameters()]
    # By hand: decay = embeddings (tied with the head) and every linear weight; no decay = norms.
    decay = [n for n in names if not n.endswith("norm.weight")]
    no_decay = [n for n in names if n.endswith("norm.weight")]
    assert "model.embed_tokens.weight" in decay and "model.norm.weight" in no_decay
    assert len(no_decay) == 2 * TINY.num_layers + 1
    ordered = decay + no_decay
    assert groups[0]["params"] == list(range(len(decay)))
    assert groups[1]["params"] == list(range(len(decay), len(ordered)))
    params = dict(model.named_parameters())
    for pid, name in enumerate(ordered):
        assert state["state"][pid]["exp_avg_sq"].shape == params[name].shape, name
    assert tuple(groups[0]["betas"]) == (TINY.adam_beta1, TINY.adam_beta2)
    assert groups[0]["eps"] == TINY.adam_epsilon


def test_build_optimizer_groups_are_decay_then_no_decay_in_named_order():
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, attention_bias=True, tie_word_embeddings=False,
    ))  # fmt: skip
    optimizer = build_optimizer(model, TINY)
    by_id = {id(p): n for n, p in model.named_parameters()}
    group_names = [[by_id[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    names = [n for n, _ in model.named_parameters()]
    expected_no_decay = [n for n in names if n.endswith(("norm.weight", ".bias"))]
    assert any(n.endswith(".bias") for n in expected_no_decay)
    assert group_names[1] == expected_no_decay
    assert group_names[0] == [n for n in names if n not in expected_no_decay]
    assert "lm_head.weight" in group_names[0]


@pytest.mark.slow
def test_train_info_records_the_run(trained):
    files, out = trained
    info = json.loads((out / "train_info.json").read_text())
    n_passages = sum(1 for _ in open(files.corpus))
    assert info["steps"] == math.ceil(n_passages / TINY.batch_size) * TINY.epochs
    assert info["epochs"] == TINY.epochs
    assert info["final_learning_rate"] == pytest.approx(
        learning_rate_at(info["steps"] - 1, info["steps"], TINY)
    )
    assert info["final_learning_rate"] == pytest.approx(TINY.learning_rate * TINY.min_lr_ratio)
    assert info["betas"] == [TINY.adam_beta1, TINY.adam_beta2]
    assert info["eps"] == TINY.adam_epsilon and info["weight_decay"] == TINY.weight_decay
    assert 0.0 < info["final_train_loss"] < math.log(TINY.vocab_size)
    assert 0.0 <= info["fact_accuracy"] <= 1.0 and info["n_queries"] == 30
    assert info["wall_time_s"] > 0
    assert PretrainConfig(**info["config"]) == TINY
    assert info["config"] == json.loads(json.dumps(TINY.__dict__))
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert fact_accuracy(model, tokenizer, read_queries(files.queries)) == pytest.approx(
        info["fact_accuracy"]
    )


@pytest.mark.slow
def test_checkpoints_are_kept_part_way_through_the_run(trained):
    """At a quarter and half of the steps: weights, tokenizer, AdamW state and the steps and
    tokens seen so far, as the run had them then (no extra training)."""
    _, out = trained
    info = json.loads((out / "train_info.json").read_text())
    total = info["steps"]
    steps = [round(total * f) for f in TINY.checkpoints]
    assert info["checkpoints"] == [f"checkpoints/step-{n}" for n in steps]
    final = AutoModelForCausalLM.from_pretrained(out).state_dict()
    tokens = []
    for name, n in zip(info["checkpoints"], steps, strict=True):
        folder = out / name
        record = json.loads((folder / "train_info.json").read_text())
        assert record["steps"] == n and record["total_steps"] == total
        state = torch.load(folder / "optimizer.pt", weights_only=True)
        assert {int(s["step"]) for s in state["state"].values()} == {n}
        assert state["param_groups"][0]["lr"] == pytest.approx(
            learning_rate_at(n - 1, total, TINY))
        assert record["final_learning_rate"] == state["param_groups"][0]["lr"]
        weights = AutoModelForCausalLM.from_pretrained(folder).state_dict()
        assert not torch.equal(weights["model.layers.0.mlp.up_proj.weight"],
                               final["model.layers.0.mlp.up_proj.weight"])
        assert AutoTokenizer.from_pretrained(folder).get_vocab() == \
            AutoTokenizer.from_pretrained(out).get_vocab()
        tokens.append(record["tokens_seen"])
    assert 0 < tokens[0] < tokens[1] < info["tokens_seen"]
    # half the steps see about half the tokens (batches differ in length)
    assert tokens[1] == pytest.approx(info["tokens_seen"] / 2, rel=0.2)


@pytest.mark.slow
def test_second_call_returns_the_cached_directory(trained, monkeypatch):
    files, out = trained
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the inputs did not change")

    monkeypatch.setattr(pretrain_module, "train", no_training)
    assert pretrain(files.corpus, files.queries, out, TINY, progress=False) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # The thread count changes how fast, not what is trained: still cached.
    faster = PretrainConfig(**{**TINY.__dict__, "num_threads": 2})
    assert pretrain(files.corpus, files.queries, out, faster, progress=False) == out
    # Other inputs: the cache does not answer.
    with pytest.raises(AssertionError, match="retrained"):
        pretrain(files.corpus, files.queries, out, PretrainConfig(**{**TINY.__dict__, "seed": 1}))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.slow
def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    files = generate_world(tmp_path / "world", WorldConfig(n_passages=40, n_queries=5))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_module.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(files.corpus, None, tmp_path / "model", TINY, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    files = generate_world(tmp_path / "world", WorldConfig(n_passages=40, n_queries=5))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FactraceError, match="not a factworld model"):
        pretrain(files.corpus, None, foreign, TINY, progress=False)
    with pytest.raises(FactraceError, match="no such file"):
        pretrain(tmp_path / "missing.jsonl", None, tmp_path / "m", TINY, progress=False)


def test_learning_rate_schedule():
    config = PretrainConfig(learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate_at(s, 100, config) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(1e-4)
    assert lrs[54] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 44 / 89)))


@pytest.mark.slow
def test_greedy_hits_agree_with_step_by_step_greedy_decoding(trained):
    _, out = trained
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts = ["Ana Bel was born in", "The official language of Tor is", "Sarn is located in"]
    queries = []
    for k, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        generated = []
        with torch.no_grad():
            for _ in range(3):  # plain greedy decoding, one token at a time
                nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                generated.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        target = tokenizer.decode(generated)
        if tokenizer(target, add_special_tokens=False)["input_ids"] != generated:
            continue  # decoding does not round-trip (e.g. a special token); not a fair case
        queries.append(Query(f"hit{k}", prompt, target))
        wrong = [t for t in range(2, len(tokenizer)) if t != generated[0]][0]
        queries.append(Query(f"miss{k}", prompt, tokenizer.decode([wrong] + generated[1:])))
    assert queries
    hits = greedy_hits(model, tokenizer, queries, batch_size=2)
    assert hits == [q.id.startswith("hit") for q in queries]


@pytest.mark.slow
def test_a_run_from_other_inputs_is_replaced(tmp_path):
    files = generate_world(tmp_path / "world", WorldConfig(n_passages=40, n_queries=5))
    out = pretrain(files.corpus, None, tmp_path / "model", TINY, progress=False)
    first = json.loads((out / "train_info.json").read_text())
    other = PretrainConfig(**{**TINY.__dict__, "epochs": 1})
    assert pretrain(files.corpus, None, out, other, progress=False) == out
    second = json.loads((out / "train_info.json").read_text())
    assert second["fingerprint"] != first["fingerprint"] and second["epochs"] == 1
    assert second["fact_accuracy"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "world"]


def test_bad_corpus_lines_are_user_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(FactraceError, match="empty"):
        pretrain(empty, None, tmp_path / "m1", TINY, progress=False)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "text": "fine"}\n{"id": "b"}\n')
    with pytest.raises(FactraceError, match=r'broken.jsonl:2: missing field "text"'):
        pretrain(broken, None, tmp_path / "m2", TINY, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jsonl", "empty.jsonl"]


def test_training_inputs_pad_on_the_right_and_ignore_padding_in_labels():
    sequences = [np.array([5, 6, 7], dtype=np.int32), [8], (9, 10)]
    got = training_inputs(sequences, pad_id=0)
    for row, seq in enumerate(sequences):
        n = len(seq)
        assert got["input_ids"][row, :n].tolist() == list(seq)
        assert got["input_ids"][row, n:].tolist() == [0] * (3 - n)
        assert got["attention_mask"][row].tolist() == [1] * n + [0] * (3 - n)
        assert got["labels"][row].tolist() == list(seq) + [-100] * (3 - n)
