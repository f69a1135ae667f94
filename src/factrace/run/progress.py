"""Progress bars (tqdm), silenced by ``-q``, and a ticking status line for steps without
iterations (an eigendecomposition, a whitening)."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

from factrace.store.ids import split_window

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


def say_coverage(coverage, enabled: bool = True) -> None:
    """The one line that says which parameters an encoding traces (stderr, with progress)."""
    if enabled:
        print(coverage.line(), file=sys.stderr, flush=True)


def passages_in(ids: Iterable[str]) -> int:
    """Passages finished in a batch of example ids: a passage split into windows ``<doc>#<n>``
    counts with its first window."""
    return sum(1 for i in ids if split_window(i)[1] in (None, 0))


def row_progress(engine, results: Iterable, ranges: list[tuple[int, int]], desc: str,
                 enabled: bool = True) -> Iterator:
    """Yield ``results`` (one per corpus range, in order) under a bar counted in corpus rows:
    batch by batch when the work runs in this process (so a corpus of one shard moves too),
    shard by shard on Ray, exact at every shard's end."""
    bar = tqdm(total=sum(b - a for a, b in ranges), desc=desc, disable=not enabled, leave=False,
               dynamic_ncols=True, unit="row")
    encoder = engine.encoder if getattr(engine, "name", "") == "local" else None
    if encoder is not None and enabled:
        encoder.on_batch = lambda ids: bar.update(passages_in(ids))
    done = 0
    try:
        for (start, stop), result in zip(ranges, results, strict=True):
            done += stop - start
            bar.update(done - bar.n)  # exact at the shard's end
            yield result
    finally:
        if encoder is not None:
            encoder.on_batch = None
        bar.close()
