"""Array jobs: which share of the inputs a task predicts (``--shard I/N``, or from a
SLURM job array or a Kubernetes Indexed Job), and the shards' summaries merged."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from unet_cbam.files import write_text
from unet_cbam.summary import SUMMARY_COLUMNS

logger = logging.getLogger(__name__)


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4): the second of four shards (1-based)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r} must look like I/N, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise ValueError(f"shard {text!r}: I must be between 1 and N")
    return index, count


def take_shard(files: list[Path], index: int, count: int) -> list[Path]:
    """Every ``count``-th file starting at ``index - 1``: disjoint, covering, balanced."""
    return files[index - 1::count]


#: Where a Kubernetes Indexed Job's shard count comes from without --shard-count.
SHARD_COUNT_VARIABLE = "UNET_CBAM_SHARD_COUNT"


def shard_from_environment(environ: dict[str, str] | None = None, count: int | None = None
                           ) -> tuple[int, int]:
    """``--shard auto``: (index, count), 1-based, from the scheduler's environment.

    A SLURM job array (``SLURM_ARRAY_TASK_ID`` with ``SLURM_ARRAY_TASK_COUNT``, or
    with ``SLURM_ARRAY_TASK_MIN``/``MAX`` for arrays such as ``--array=0-7``), or a
    Kubernetes Indexed Job (``JOB_COMPLETION_INDEX``, 0-based; its count from
    ``count`` (``--shard-count``) or ``UNET_CBAM_SHARD_COUNT``).
    """
    env = dict(os.environ if environ is None else environ)

    def number(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise ValueError(f"--shard auto: {name}={env[name]!r} is not a number") from None

    if "SLURM_ARRAY_TASK_ID" in env:
        task = number("SLURM_ARRAY_TASK_ID")
        low = number("SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        if count is None and "SLURM_ARRAY_TASK_COUNT" in env:
            count = number("SLURM_ARRAY_TASK_COUNT")
        elif count is None and "SLURM_ARRAY_TASK_MAX" in env:
            count = number("SLURM_ARRAY_TASK_MAX") - low + 1
        if count is None:
            raise ValueError("--shard auto: SLURM_ARRAY_TASK_ID is set but neither "
                             "SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX; give "
                             "--shard-count N")
        index = task - low + 1
        where = f"SLURM array task {task} of {low}..{low + count - 1}"
    elif "JOB_COMPLETION_INDEX" in env:
        index = number("JOB_COMPLETION_INDEX") + 1
        if count is None and SHARD_COUNT_VARIABLE in env:
            count = number(SHARD_COUNT_VARIABLE)
        if count is None:
            raise ValueError("--shard auto: JOB_COMPLETION_INDEX is set but the shard count is "
                             f"not: give --shard-count N or set {SHARD_COUNT_VARIABLE} (the "
                             "job's completions)")
        where = f"Kubernetes completion index {index - 1} of {count}"
    else:
        raise ValueError("--shard auto: not in a SLURM job array (no SLURM_ARRAY_TASK_ID) nor "
                         "a Kubernetes Indexed Job (no JOB_COMPLETION_INDEX); give --shard I/N")
    if not 1 <= index <= count:
        raise ValueError(f"--shard auto: {where} is outside 1..{count}")
    return index, count


SHARD_SUMMARY = re.compile(r"^summary-shard(\d+)of(\d+)\.csv$")


def shard_summary_name(index: int, count: int) -> str:
    """``summary-shardIofN.csv``: the summary file of shard ``index`` of ``count``."""
    return f"summary-shard{index}of{count}.csv"


@dataclass
class MergeReport:
    """What ``merge_summaries`` found: problems make the exit status 1."""

    summary: Path
    rows: int
    shards: int
    missing_shards: list[int] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_predicted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_shards or self.duplicates or self.failed
                    or self.not_predicted)


def merge_summaries(output_dir: str | Path, inputs: list[Path] | None = None) -> MergeReport:
    """Join the shards' ``summary-shardIofN.csv`` into ``summary.csv`` (sorted, atomic).

    Reports shards whose summary is missing, inputs listed by several shards,
    failed inputs and, given ``inputs`` (the whole list), inputs no shard lists.
    """
    output_dir = Path(output_dir)
    found = {}
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            match = SHARD_SUMMARY.match(path.name)
            if match:
                found[(int(match.group(1)), int(match.group(2)))] = path
    if not found:
        raise FileNotFoundError(f"{output_dir}: no shard summaries (summary-shardIofN.csv) "
                                "to merge")
    counts = {count for _, count in found}
    if len(counts) > 1:
        raise ValueError(f"{output_dir}: shard summaries of different shard counts "
                         f"({', '.join(map(str, sorted(counts)))}): remove the stale ones")
    count = counts.pop()
    rows: dict[str, list[dict]] = {}
    for key in sorted(found):
        with open(found[key], newline="") as handle:
            for row in csv.DictReader(handle):
                rows.setdefault(row["file"], []).append(row)
    merged = [versions[0] for _, versions in sorted(rows.items())]
    summary = output_dir / "summary.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(merged)
    write_text(summary, buffer.getvalue())
    listed = {str(path) for path in inputs or []}
    return MergeReport(
        summary=summary, rows=len(merged), shards=count,
        missing_shards=[i for i in range(1, count + 1) if (i, count) not in found],
        duplicates=sorted(name for name, versions in rows.items() if len(versions) > 1),
        failed=sorted(name for name, versions in rows.items()
                      if all(v["status"] == "failed" for v in versions)),
        not_predicted=sorted(listed - set(rows)) if inputs is not None else [])

