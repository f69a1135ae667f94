"""Progress bars (tqdm), silenced by ``-q``."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(iterable, total=None, desc: str = "", enabled: bool = True, unit: str = "it"):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, leave=False,
                dynamic_ncols=True)
