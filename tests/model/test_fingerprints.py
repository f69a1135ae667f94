"""Fingerprints of what made a store: the tokenizer's ignores its transient settings."""

from transformers import AutoTokenizer

from factrace.model.load import tokenizer_fingerprint


def test_truncation_and_padding_do_not_change_the_tokenizer_fingerprint(world, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c", "a"], truncation=True, max_length=8, padding=True)
    assert tokenizer_fingerprint(tokenizer) == before
    tokenizer.save_pretrained(tmp_path)  # saved with its truncation and padding settings
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tmp_path)) == before


def test_another_vocabulary_changes_it(world, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    before = tokenizer_fingerprint(tokenizer)
    tokenizer.add_tokens(["zyxw"])
    assert tokenizer_fingerprint(tokenizer) != before
