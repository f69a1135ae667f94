"""Progress bars (tqdm), silenced by ``-q``, and a ticking status line for steps without
iterations (an eigendecomposition, a whitening)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from tqdm.auto import tqdm

TICK_S = 1.0


def progress_bar(iterable, total=None, desc: str = "", enabled: bool = True, unit: str = "it"):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, leave=False,
                dynamic_ncols=True)


@contextlib.contextmanager
def progress_step(desc: str, enabled: bool = True, tick_s: float = TICK_S) -> Iterator[None]:
    """Show ``desc`` with its elapsed time, refreshed every ``tick_s`` seconds, while the body
    runs: a long step with no iterations to count still shows that it is working."""
    bar = tqdm(total=None, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True,
               bar_format="{desc}: {elapsed}")
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(tick_s):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True, name="factrace-progress")
    if enabled:
        bar.refresh()
        ticker.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            ticker.join()
        bar.close()
