"""The Trainer callback: checkpoints factrace takes as they are, and a store at the end."""

import json

import pytest
import torch

from factrace.config import variant_config
from factrace.errors import FactraceError
from factrace.integrations import FactraceCallback, mark_checkpoint
from factrace.model.optimizer_state import SECOND_MOMENT_FILE, load_optimizer_state

ENCODER = variant_config("trackstar", dim=256, train_examples=40, batch_tokens=512)


def _dataset(world, tokenizer):
    from datasets import Dataset

    texts = [r["text"] for r in world["rows"]]
    encoded = tokenizer(texts, truncation=True, max_length=48)
    return Dataset.from_dict({"input_ids": encoded["input_ids"],
                              "attention_mask": encoded["attention_mask"]})


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """A 4-step Trainer run (AdamW, a checkpoint every 2 steps) with the callback building a
    store of the world corpus from the final model."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    root = tmp_path_factory.mktemp("trainer")
    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    model = AutoModelForCausalLM.from_pretrained(world["model"])
    callback = FactraceCallback(index=str(root / "store"), corpus=world["corpus"],
                                encoder=ENCODER)
    args = TrainingArguments(output_dir=str(root / "out"), max_steps=4, save_steps=2,
                             per_device_train_batch_size=4, learning_rate=1e-3,
                             report_to=[], use_cpu=True, logging_steps=100, disable_tqdm=True,
                             optim="adamw_torch", save_strategy="steps")
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(world, tokenizer),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                      processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    return root, callback, model


def test_every_checkpoint_and_the_final_model_are_marked(trained):
    root, callback, _ = trained
    names = [p.name for p in callback.marked]
    assert names == ["checkpoint-2", "checkpoint-4", "factrace-final"]
    for directory in callback.marked:
        marker = json.loads((directory / "factrace.json").read_text())
        assert (directory / SECOND_MOMENT_FILE).is_file()
        assert marker["second_moment"]["optimizer"] == "AdamW"
        assert (directory / "tokenizer.json").is_file() and (directory / "config.json").is_file()
    assert json.loads((root / "out" / "checkpoint-4" / "factrace.json").read_text())["step"] == 4


def test_the_second_moment_is_the_trainers(trained):
    """The reference: the Trainer's own optimizer.pt of the same checkpoint, read as factrace
    reads it (its two parameter groups)."""
    root, _, model = trained
    checkpoint = root / "out" / "checkpoint-4"
    ours = load_optimizer_state(checkpoint, model)  # the directory: factrace's file
    theirs = load_optimizer_state(checkpoint / "optimizer.pt", model)
    assert ours.source.endswith(SECOND_MOMENT_FILE)
    assert set(ours.moments) == set(theirs.moments)
    for name, moment in theirs.moments.items():
        assert torch.equal(ours[name].exp_avg_sq, moment.exp_avg_sq.float())
        assert ours[name].step == moment.step == 4
        assert ours[name].beta2 == pytest.approx(moment.beta2)
        assert torch.equal(ours[name].bias_corrected(), moment.bias_corrected())


def test_the_store_is_built_and_the_checkpoint_taken_as_it_is(trained, world, tmp_path):
    from factrace.cli import main

    root, _, _ = trained
    out = tmp_path / "r.jsonl"
    assert main(["trace", "--index", str(root / "store"), "--queries", world["queries"],
                 "--out", str(out), "-q"]) == 0
    final = root / "out" / "factrace-final"
    assert json.loads((root / "store" / "manifest.json").read_text())["config"]["model"] == \
        str(final)
    # --model and --optimizer-state take the checkpoint directory as it is
    assert main(["index", "build", "--model", str(root / "out" / "checkpoint-2"),
                 "--optimizer-state", str(root / "out" / "checkpoint-2"), "--corpus",
                 world["corpus"], "--out", str(tmp_path / "s2"), "--dim", "256",
                 "--train-examples", "40", "-q"]) == 0


def test_a_loop_of_ones_own_marks_its_checkpoints(world, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    ids = torch.randint(3, 100, (2, 12))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "ckpt")
    mark_checkpoint(tmp_path / "ckpt", model, optimizer, step=3)
    state = load_optimizer_state(tmp_path / "ckpt", model)
    for name, param in model.named_parameters():
        assert torch.equal(state[name].exp_avg_sq, optimizer.state[param]["exp_avg_sq"])
        assert state[name].beta2 == pytest.approx(0.95) and state[name].step == 3


def test_an_optimizer_without_a_second_moment_is_refused(world, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FactraceError, match="keeps no second moment"):
        mark_checkpoint(tmp_path / "ckpt", model, optimizer)
    assert not (tmp_path / "ckpt" / "factrace.json").exists()


def test_compare_takes_a_marked_checkpoint_with_tail_patch(trained, world, tmp_path,
                                                            monkeypatch):
    """compare (tail-patch included: the Trainer's whole AdamW state in the same directory)
    accepts a checkpoint the callback marked, as it is."""
    import dataclasses

    import factrace.evaluate.compare as compare
    from factrace.cli import main

    original = compare.compare

    def quicker(cfg):  # one rung and one baseline: the checkpoint's path, not the ladder
        return original(dataclasses.replace(cfg, variants=("trackstar",), baselines=("bm25",)))

    monkeypatch.setattr(compare, "compare", quicker)
    root, _, _ = trained
    checkpoint = str(root / "out" / "checkpoint-4")
    queries = [json.loads(line) for line in open(world["queries"])]
    qrels = tmp_path / "qrels.jsonl"
    qrels.write_text("".join(json.dumps({"query_id": q["id"], "doc_id": world["rows"][0]["id"]})
                             + "\n" for q in queries))
    out = tmp_path / "compared"
    assert main(["compare", "--model", checkpoint, "--optimizer-state", checkpoint,
                 "--corpus", world["corpus"], "--queries", world["queries"], "--qrels",
                 str(qrels), "--out", str(out), "--tail-patch-queries", "2", "--dim", "64",
                 "--train-examples", "16", "-q"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "AdamW" in results["metadata"]["tail_patch"]["step"]  # the Trainer's own state
    assert any(row.get("tail_patch") is not None for row in results["rows"])
