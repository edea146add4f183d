"""Fewer labels: supervised-only against semi-supervised (``train.py --unlabeled``) at the
same time budget, on a fraction of a data set's training split.

For each data set, label fraction and seed, a fixed draw (by the seed) of that fraction of
``train/`` is the labelled folder and the rest of ``train/``'s images, without their masks,
the unlabelled folder (both as links, never copies). Each variant trains on them with
``--time-budget`` and nothing else, then predicts and scores the test split, which is never
used for a choice (``benchmarks.datasets.measure``). The summary gives each data set,
fraction and variant the mean and standard deviation over seeds of the test Dice, and the
semi-supervised gain in seed standard deviations (the larger of the two variants' stds).
Prints tables and writes ``benchmarks/results/label_efficiency/label-efficiency-<label>.json``
(rewritten after every run: what finished is kept).

    python -m benchmarks.label_efficiency --data-sets kvasir ctc --fractions 0.1 0.25 \\
        --seeds 1 2 3 --time-budget 30m
    python -m benchmarks.label_efficiency --quick          # CTC, 10 %, 2 minutes: checks it
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import machine, print_table, write_json
from benchmarks.datasets import DATA_SETS, SHARED, measure

SCRIPT = Path(__file__).stem
VARIANTS = ("supervised", "semi-supervised")


def fraction_split(name: str, fraction: float, seed: int, work: Path) -> tuple[Path, Path, int]:
    """(labelled folder with images/ and masks/, unlabelled folder of images, labelled
    count): ``fraction`` of the training split's pairs drawn by ``seed``, as links."""
    train = SHARED / DATA_SETS[name][0]
    images = sorted(p for p in (train / "images").iterdir() if not p.name.startswith("."))
    masks = {p.stem: p for p in (train / "masks").iterdir()}
    count = max(2, round(fraction * len(images)))
    chosen = set(np.random.default_rng(seed).permutation(len(images))[:count].tolist())
    root = work / f"{name}-{round(fraction * 100)}pct-seed{seed}"
    labelled, unlabeled = root / "labelled", root / "unlabeled"
    if not root.exists():
        for folder in (labelled / "images", labelled / "masks", unlabeled):
            folder.mkdir(parents=True)
        for index, image in enumerate(images):
            if index in chosen:
                (labelled / "images" / image.name).symlink_to(image)
                mask = masks[image.stem]
                (labelled / "masks" / mask.name).symlink_to(mask)
            else:
                (unlabeled / image.name).symlink_to(image)
    return labelled, unlabeled, count


def summarize(rows: list[dict]) -> list[dict]:
    """Per data set and fraction: each variant's test Dice (mean, std over seeds) and the
    semi-supervised gain in seed standard deviations."""
    groups: dict[tuple[str, float], dict[str, list[float]]] = {}
    for row in rows:
        groups.setdefault((row["data_set"], row["fraction"]), {}).setdefault(
            row["variant"], []).append(row["test_dice"])
    summary = []
    for (name, fraction), by_variant in groups.items():
        entry = {"data_set": name, "fraction": fraction}
        for variant, values in by_variant.items():
            entry[f"{variant}_seeds"] = len(values)
            entry[f"{variant}_mean"] = round(float(np.mean(values)), 4)
            entry[f"{variant}_std"] = round(float(np.std(values)), 4)
        if all(f"{v}_mean" in entry for v in VARIANTS):
            gain = entry["semi-supervised_mean"] - entry["supervised_mean"]
            spread = max(entry["supervised_std"], entry["semi-supervised_std"])
            entry["gain"] = round(gain, 4)
            entry["gain_in_std"] = round(gain / spread, 2) if spread > 0 else None
        summary.append(entry)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-sets", nargs="+", default=["kvasir", "ctc"],
                        choices=[n for n in DATA_SETS if n != "isbi"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.25])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--time-budget", default="30m")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--label", default="auto")
    parser.add_argument("--work", type=Path, help="keep runs here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true",
                        help="2-minute budget, one seed, CTC at 10 %%: checks the script")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.time_budget, arguments.seeds = "2m", [1]
        arguments.data_sets, arguments.fractions = ["ctc"], [0.1]
        arguments.label = f"{arguments.label}-quick"
    info = machine()  # before measuring: the commit measured, not a later one
    work = arguments.work or Path(tempfile.mkdtemp(prefix="unet_cbam-labels-"))
    work.mkdir(parents=True, exist_ok=True)
    options = ["--time-budget", arguments.time_budget]
    rows = []
    # Variants innermost: each pair is compared close together in time (the machine's
    # speed drifts), and a run cut short still holds whole pairs.
    for name in arguments.data_sets:
        for fraction in arguments.fractions:
            for seed in arguments.seeds:
                labelled, unlabeled, count = fraction_split(name, fraction, seed, work)
                for variant in arguments.variants:
                    extra = ["--unlabeled", str(unlabeled)] if variant != "supervised" else []
                    tag = f"{variant}-{round(fraction * 100)}pct"
                    row = measure(name, work, options + extra, seed, tag, train_path=labelled)
                    row.update(variant=variant, fraction=fraction, labelled=count,
                               unlabeled=sum(1 for _ in unlabeled.iterdir()))
                    rows.append(row)
                    print(f"{name} {fraction:.0%} {variant} seed {seed}: test Dice "
                          f"{row['test_dice']:.3f} (train {row['train_s']:.0f} s, "
                          f"{row['over_budget']:+.1%} of the budget)", flush=True)
                    write_json(SCRIPT, f"label-efficiency-{arguments.label}.json", {
                        "machine": info, "train_options": options, "work": str(work),
                        "runs": rows, "summary": summarize(rows), "complete": False})
    print_table(rows, ["data_set", "fraction", "variant", "seed", "labelled", "unlabeled",
                       "test_dice", "val_dice", "epochs_run", "train_s", "over_budget"])
    summary = summarize(rows)
    print()
    print_table(summary, [key for key in summary[0]] if summary else [])
    path = write_json(SCRIPT, f"label-efficiency-{arguments.label}.json", {
        "machine": info, "train_options": options, "work": str(work), "runs": rows,
        "summary": summary, "complete": True})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
