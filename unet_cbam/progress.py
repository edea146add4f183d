"""Progress on long work: a bar for a person watching a terminal (or a notebook), and for
a log file or CI a line every so many items, never one per update."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Not a terminal: a logged line after every this many items (and after the last).
LOG_EVERY = 100


def interactive() -> bool:
    """Whether a person watches the output: standard error is a terminal, or this runs in a
    notebook's kernel (where tqdm draws a widget)."""
    return sys.stderr.isatty() or _in_notebook()


def _in_notebook() -> bool:
    """A running Jupyter kernel's shell (not merely ipykernel imported, as papermill does)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def keras_verbosity(progress: bool) -> int:
    """Keras' ``verbose`` for ``fit``: a per-step bar on a terminal, one line per epoch
    elsewhere, and one line per epoch too when progress is off."""
    return 1 if progress and interactive() else 2


def progress(items: Iterable[T], *, desc: str, unit: str, enabled: bool = True,
             total: int | None = None, leave: bool = True, log_every: int = LOG_EVERY
             ) -> Iterable[T]:
    """``items``, with a bar when ``enabled`` and someone watches (``interactive``), with a
    logged line every ``log_every`` items when enabled and no one does, as they are."""
    if not enabled:
        return items
    if interactive():
        return tqdm(items, desc=desc, unit=unit, total=total, leave=leave)
    return _logged(items, desc, unit, total, log_every)


def _logged(items: Iterable[T], desc: str, unit: str, total: int | None, log_every: int
            ) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    started, done = time.perf_counter(), 0
    for item in items:
        yield item
        done += 1
        if done % log_every == 0 and done != total:
            logger.info("%s: %d%s %s(s), %.0f s", desc, done, f" of {total}" if total else "",
                        unit, time.perf_counter() - started)
    logger.info("%s: %d %s(s) in %.0f s", desc, done, unit, time.perf_counter() - started)
