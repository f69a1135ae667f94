"""Retraining on subsets (LDS): the recipe reproduces the pretrained model bit for bit, outputs
are the target's log-probability, retrainings are cached and the same in worker processes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_factworld_pretrain import TINY as PRETRAIN_TINY
from transformers import AutoModelForCausalLM, AutoTokenizer

import factrace.factworld.retrain as retrain_module
from factrace.data.corpus import iter_corpus
from factrace.data.io import read_queries
from factrace.evaluate.lds import Subset, random_subsets
from factrace.factworld.generate import generate_world
from factrace.factworld.pretrain import pretrain
from factrace.factworld.retrain import (
    Recipe,
    measure_outputs,
    retrain_all,
    retrain_outputs,
    subset_key,
    train_on_subset,
)
from factrace.factworld.world import WorldConfig

TINY = dataclasses.replace(PRETRAIN_TINY, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    files = generate_world(root / "world", WorldConfig(n_passages=120, n_queries=12, seed=2))
    model_dir = pretrain(files.corpus, files.queries, root / "model", TINY, progress=False)
    recipe = Recipe(str(files.corpus), str(files.queries), str(model_dir), TINY)
    ids = [p.id for p in iter_corpus(files.corpus)]
    return recipe, model_dir, ids


def test_recipe_on_the_full_set_reproduces_the_pretrained_model_bit_for_bit(world):
    recipe, model_dir, ids = world
    saved = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    for passages in (None, ids):
        model, _ = train_on_subset(recipe, passages, TINY.seed)
        again = model.state_dict()
        assert saved.keys() == again.keys()
        for name, tensor in saved.items():
            assert torch.equal(tensor, again[name]), name
    half, _ = train_on_subset(recipe, ids[::2], TINY.seed)
    weight = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(half.state_dict()[weight], saved[weight])
    other_seed, _ = train_on_subset(recipe, None, TINY.seed + 1)
    assert not torch.equal(other_seed.state_dict()[weight], saved[weight])


def test_outputs_are_the_targets_log_probability(world):
    """Batched, padded measurement against one query at a time, log-softmax written out."""
    recipe, model_dir, _ = world
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    queries = read_queries(recipe.queries)
    got = measure_outputs(model, tokenizer, queries, TINY.max_length, batch_size=5)
    assert list(got) == [q.id for q in queries]
    for q in queries:
        prompt = tokenizer(q.prompt)["input_ids"]
        target = tokenizer(q.target, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        expected = sum(float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(target))
        assert got[q.id] == pytest.approx(expected, abs=1e-4)
        assert got[q.id] < 0


def test_retraining_is_cached_by_subset_seed_and_recipe(world, tmp_path, monkeypatch):
    recipe, _, ids = world
    subset = Subset("a", tuple(ids[:80]))
    first = retrain_outputs(recipe, subset, 0, tmp_path)
    assert first["n_passages"] == 80 and len(first["outputs"]) == 12

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(retrain_module, "train_on_subset", no_training)
    assert retrain_outputs(recipe, subset, 0, tmp_path) == first
    fp = recipe.fingerprint()
    assert subset_key(fp, subset, 0) != subset_key(fp, subset, 1)
    assert subset_key(fp, subset, 0) != subset_key(fp, Subset("a", tuple(ids[:79])), 0)
    bigger = dataclasses.replace(recipe, config=dataclasses.replace(TINY, epochs=3))
    assert bigger.fingerprint() != fp
    threads = dataclasses.replace(recipe, config=dataclasses.replace(TINY, num_threads=2))
    assert threads.fingerprint() == fp


@pytest.mark.slow
def test_worker_processes_give_the_same_outputs(world, tmp_path):
    recipe, _, ids = world
    subsets = random_subsets(ids, 2, 0.5, 0)
    here = [retrain_outputs(recipe, s, 0, tmp_path / "here") for s in subsets]
    pooled = retrain_all(recipe, subsets, [0], tmp_path / "pool", workers=2)
    assert [r["outputs"] for r in pooled] == [r["outputs"] for r in here]
    assert [r["subset"] for r in pooled] == ["s000", "s001"]


@pytest.mark.slow  # starts a local Ray cluster
def test_ray_tasks_give_the_same_outputs(world, tmp_path):
    recipe, _, ids = world
    subsets = random_subsets(ids, 2, 0.5, 1)
    here = [retrain_outputs(recipe, s, 0, tmp_path / "here") for s in subsets]
    on_ray = retrain_all(recipe, subsets, [0], tmp_path / "ray", engine="ray", workers=2)
    assert [r["outputs"] for r in on_ray] == [r["outputs"] for r in here]
