"""The encoding store: the one owner of its on-disk contract.

- :mod:`~factrace.store.manifest`: the manifest (format version, fingerprints, shards, encoder
  state, tasks, additions, passage locations), checksums, the atomic writes, fingerprint
  comparison.
- :mod:`~factrace.store.encodings`: :class:`StoreWriter` / :class:`EncodingStore`, the float16
  shards of rows (resumable, fingerprinted, verified).
- :mod:`~factrace.store.locations`: where each passage of a corpus is (file, row, byte
  offset), so its text is read directly, and the check that the corpus has not changed.
- :mod:`~factrace.store.ids`: window ids ``<doc>#<n>`` and how a row id maps back to its
  passage.
- :mod:`~factrace.store.lock`: the one-writer lock.
"""

from factrace.lazy import lazy_exports

# imported on first use: the light modules (ids, locations) need no PyTorch
__getattr__, __dir__ = lazy_exports(globals(), {
    "EncodingStore": "factrace.store.encodings", "StoreWriter": "factrace.store.encodings",
})

__all__ = ["EncodingStore", "StoreWriter"]
