"""A stderr progress bar for engine events (tqdm), silent when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable]:
    """Yield an event callback that drives a tqdm bar on stderr (a no-op when disabled)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda event: None
        return
    from tqdm import tqdm

    bar = tqdm(total=100, file=sys.stderr, leave=False, bar_format="{desc:<10} {bar} {percentage:3.0f}% {elapsed}")

    def on_event(event) -> None:
        bar.set_description_str(event.stage)
        bar.n = int(100 * event.progress)
        bar.refresh()

    try:
        yield on_event
    finally:
        bar.close()
