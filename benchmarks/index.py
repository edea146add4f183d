"""The index of the results: ``benchmarks/results/README.md``, one table per script.

    python -m benchmarks.index            # rewrite benchmarks/results/README.md
    python -m benchmarks.index --check    # exit 1 if it is not up to date (CI-friendly)

For every results file: what it measured (the script's purpose and the file's own
settings: data sets, variants, seeds, budget ...), the CPU and its vector extensions,
the commit and the date, all read from the file's ``machine`` section, which every
script writes (``benchmarks.common.write_json``). ``archive/`` holds files from before
that section existed; its own README describes them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from benchmarks.common import RESULTS
from unet_cbam.tables import markdown_table

INDEX = RESULTS / "README.md"
#: The settings of a results file that say what it measured, where it records them.
SETTINGS = ("train_options", "data_sets", "variants", "seeds", "time_budget", "label", "models",
            "precisions",
            "runtimes", "sizes", "confidence", "judge", "images", "size", "rounds", "repeats",
            "tile_size", "budget", "note")


def purpose(script: str) -> str:
    """The first line of the script's docstring."""
    try:
        module = importlib.import_module(f"benchmarks.{script}")
    except ImportError:
        return ""
    return (module.__doc__ or "").strip().split("\n")[0].rstrip(".")


def settings(payload: dict) -> str:
    """The settings a results file records, briefly."""
    shown = []
    summary = payload.get("summary")
    if isinstance(summary, list) and summary and isinstance(summary[0], dict) \
            and "data_set" in summary[0]:  # benchmarks.datasets: what was trained, and scored
        for row in summary:
            if "fraction" in row:  # benchmarks.label_efficiency: each variant's mean
                means = ", ".join(f"{key[:-5]} {value:.3f}" for key, value in row.items()
                                  if key.endswith("_mean") and value is not None)
                shown.append(f"{row['data_set']} {row['fraction']:.0%} labels: test Dice "
                             f"{means}")
                continue
            iou = row["data_set"] == "labelmefacade"  # scored by mean IoU (datasets.py)
            score = row.get("test_score_mean", row.get("test_dice_mean", float("nan")))
            shown.append(f"{row['data_set']} {row.get('variant', '')} x{row.get('seeds', '?')}: "
                         f"test {'mean IoU' if iou else 'Dice'} {score:.3f}")
    if isinstance(payload.get("runs"), dict) and any(  # benchmarks.runtime --test-scores
            "test_score" in row for row in payload.get("results", [])):
        shown.append("test scores of " + ", ".join(payload["runs"]))
    for key in SETTINGS:
        if key not in payload or payload[key] in (None, [], {}):
            continue
        value = payload[key]
        if isinstance(value, dict):
            value = ", ".join(str(k) for k in value)
        elif isinstance(value, list):
            value = " ".join(str(v) for v in value)
        text = " ".join(str(value).split())
        shown.append(f"{key} {text[:80] + ' ...' if len(text) > 80 else text}")
    return "; ".join(shown)


def rows(folder: Path) -> list[list[str]]:
    """A row per results file of ``folder``: file, what, CPU, commit, date."""
    table = []
    for path in sorted(folder.glob("*.json")):
        payload = json.loads(path.read_text())
        machine = payload.get("machine") or {}
        cpu = machine.get("cpu", "not recorded")
        if machine.get("cpu_features"):
            cpu += f" ({', '.join(machine['cpu_features'])})"
        if machine.get("environment"):  # e.g. oneDNN capped at AVX2: a stand-in CPU
            cpu += " with " + ", ".join(f"{k}={v}" for k, v in machine["environment"].items())
        table.append([f"`{path.name}`", settings(payload) or "-", cpu,
                      str(machine.get("commit", "-"))[:12], str(machine.get("date", "-"))[:10]])
    return table


def render() -> str:
    """The index's text."""
    parts = ["# Benchmark results", "",
             "Written by `python -m benchmarks.index` from the files themselves: each script "
             "writes its results into its own folder, with the commit, date, CPU and package "
             "versions it ran with (`machine` in each file). The studies that quote them are "
             "in the documentation's Benchmarks pages. `archive/` holds results from before "
             "that provenance was recorded (see its README).", ""]
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir() and p.name != "archive"):
        parts += [f"## {folder.name}", "", f"`python -m benchmarks.{folder.name}`: "
                  f"{purpose(folder.name) or 'see the script'}.", "",
                  markdown_table(rows(folder), ["file", "what", "CPU", "commit", "date"]), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the index; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.index", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the index differs from what the files say")
    arguments = parser.parse_args(argv)
    text = render()
    if arguments.check:
        current = INDEX.read_text() if INDEX.is_file() else ""
        if current != text:
            print(f"{INDEX} is out of date: run python -m benchmarks.index", file=sys.stderr)
            return 1
        return 0
    INDEX.write_text(text)
    print(f"written: {INDEX}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
