"""A prediction's summary CSV: one row per input (its status, mask, size, time and
foreground), appended as each item finishes and rewritten sorted at the end."""

from __future__ import annotations

import csv
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from unet_cbam.files import write_text

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["file", "status", "mask", "height", "width", "seconds",
                   "foreground_fraction", "error"]



@dataclass
class ItemResult:
    """One input's row of the summary: what became of it."""
    file: Path
    status: str                   # ok, skipped (outputs exist), failed
    mask: Path | None = None
    height: int | None = None
    width: int | None = None
    seconds: float | None = None
    foreground_fraction: float | None = None
    error: str | None = None



class SummaryWriter:
    """summary.csv, a row appended as each item finishes, rewritten sorted at the end.

    Rows are appended (one write and a flush each) so a killed run still
    leaves a summary of what it finished; the final rewrite is atomic. A
    summary that cannot be written is logged, never the end of the batch.
    """

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.broken = False
        self._guard(lambda: write_text(path, ",".join(SUMMARY_COLUMNS) + "\n"))

    def add(self, item: ItemResult) -> None:
        """Append ``item``'s row (thread-safe; a failing write is logged once)."""
        def append():
            with open(self.path, "a", newline="") as handle:
                handle.write(csv_line(item))
        with self.lock:
            if not self.broken:
                self._guard(append)

    def rewrite(self, items: list[ItemResult]) -> None:
        """Write every row again, in order, atomically."""
        text = ",".join(SUMMARY_COLUMNS) + "\n" + "".join(csv_line(i) for i in items)
        self.broken = False
        self._guard(lambda: write_text(self.path, text))

    def _guard(self, action) -> None:
        try:
            action()
        except OSError as error:
            self.broken = True
            logger.error("%s: cannot write the summary (%s)", self.path,
                         error.strerror or error)


def csv_line(item: ItemResult) -> str:
    """``item`` as one CSV line in ``SUMMARY_COLUMNS`` order."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow([
        item.file, item.status, item.mask or "", item.height or "", item.width or "",
        "" if item.seconds is None else f"{item.seconds:.3f}",
        "" if item.foreground_fraction is None else f"{item.foreground_fraction:.6f}",
        item.error or ""])
    return buffer.getvalue()


