"""The fitted state of an encoder, as one value: what a store keeps so that queries asked later
are encoded exactly as its passages were.

- the optimizer correction when it was estimated from the corpus (``--second-moment estimate``;
  otherwise it is read from the optimizer state file, which the fingerprints identify),
- R_train's eigenbasis (:class:`~factrace.encode.whitening.TrainBasis`),
- provenance: the factrace version, the resolved dimension and dtype, the device it ran on.

Saved with :meth:`EncoderState.save` (one torch file, written atomically; its sha256 goes into
the store's manifest) and read back with :meth:`EncoderState.load`, which checks that sha256.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch

from factrace.data.atomic import atomic_path
from factrace.encode.second_moment import Correction
from factrace.encode.whitening import TrainBasis
from factrace.errors import FactraceError

STATE_VERSION = 2


@dataclass
class EncoderState:
    basis: TrainBasis
    second_moment_note: str
    corrections: dict[str, Correction] | None = None
    """Only for ``--second-moment estimate`` (factored row/column corrections per module)."""
    provenance: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> str:
        """Write atomically; returns the file's sha256 (for the manifest)."""
        state = {
            "version": STATE_VERSION,
            "basis": self.basis.to_state(),
            "second_moment_note": self.second_moment_note,
            "corrections": None if self.corrections is None else {
                n: {"row": c.row, "col": c.col} for n, c in self.corrections.items()},
            "provenance": self.provenance,
        }
        buffer = io.BytesIO()  # not the temporary file: torch records its name in the archive
        torch.save(state, buffer)
        data = buffer.getvalue()
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | Path, sha256: str | None = None) -> EncoderState:
        """Read a saved state; ``sha256``: what the manifest recorded (checked when given)."""
        path = Path(path)
        if not path.is_file():
            raise FactraceError(f"{path.parent}: the store has no {path.name}; rebuild it")
        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise FactraceError(f"{path} does not match the checksum its store recorded; "
                                "rebuild the store")
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if state.get("version") != STATE_VERSION:
            raise FactraceError(f"{path} is an encoder state of another factrace version; "
                                "rebuild the store")
        corrections = state["corrections"]
        if corrections is not None:
            corrections = {n: Correction(row=c["row"], col=c["col"])
                           for n, c in corrections.items()}
        return cls(TrainBasis.from_state(state["basis"]), state["second_moment_note"],
                   corrections, state["provenance"])
