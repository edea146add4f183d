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

With ``--selection``, the selection curve instead: from the same labelled fraction, two
rounds each add ``--round-fraction`` of ``train/`` from the unlabelled rest, chosen by
``unet-cbam suggest`` (on the previous round's model) or at random (seeded), and retrain
(supervised, the same budget) each time; the test Dice after each round, per strategy.

    python -m benchmarks.label_efficiency --data-sets kvasir ctc --fractions 0.1 0.25 \\
        --seeds 1 2 3 --time-budget 30m
    python -m benchmarks.label_efficiency --selection --data-sets kvasir --fractions 0.1 \\
        --seeds 1 2 3 --time-budget 30m
    python -m benchmarks.label_efficiency --quick          # CTC, 10 %, 2 minutes: checks it
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import machine, print_table, write_json
from benchmarks.datasets import DATA_SETS, SHARED, measure, run

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


def add_labels(labelled: Path, unlabeled: Path, chosen: list[str], folder: Path) -> tuple[
        Path, Path]:
    """A new (labelled, unlabelled) pair of folders: ``labelled``'s pairs plus the images
    named ``chosen`` from ``unlabeled`` with their masks (from the training split), the
    rest of ``unlabeled`` unlabelled. As links."""
    new_labelled, new_unlabeled = folder / "labelled", folder / "unlabeled"
    for part in (new_labelled / "images", new_labelled / "masks", new_unlabeled):
        part.mkdir(parents=True, exist_ok=True)
    for kind in ("images", "masks"):
        for path in (labelled / kind).iterdir():
            (new_labelled / kind / path.name).symlink_to(path.resolve())
    for path in unlabeled.iterdir():
        source = path.resolve()
        if path.name in chosen:
            (new_labelled / "images" / path.name).symlink_to(source)
            mask = next(source.parent.parent.joinpath("masks").glob(f"{source.stem}.*"))
            (new_labelled / "masks" / mask.name).symlink_to(mask)
        else:
            (new_unlabeled / path.name).symlink_to(source)
    return new_labelled, new_unlabeled


def suggested(run_dir: Path, unlabeled: Path, count: int, work: Path, log: Path) -> list[str]:
    """The ``count`` images ``unet-cbam suggest`` chooses from ``unlabeled``."""
    output = work / "suggestions"
    run([sys.executable, "-m", "unet_cbam", "suggest", "--model", str(run_dir), "--images",
         str(unlabeled), "--count", str(count), "--output", str(output), "--quiet"], log)
    with (output / "suggestions.csv").open() as stream:
        return [row["image"] for row in csv.DictReader(stream) if row["chosen"] == "yes"]


def selection_curve(name: str, fraction: float, seed: int, work: Path, options: list[str],
                    round_fraction: float, rounds: int = 2) -> list[dict]:
    """Rows of one seed's selection curve: round 0 on ``fraction``, then ``rounds`` rounds
    adding ``round_fraction`` of the training split each, by suggest and at random."""
    labelled, unlabeled, count = fraction_split(name, fraction, seed, work)
    total = count + sum(1 for _ in unlabeled.iterdir())
    step = max(1, round(round_fraction * total))
    tag = f"{round(fraction * 100)}pct"
    first = measure(name, work, options, seed, f"select-{tag}-round0", train_path=labelled)
    first.update(variant="round 0", strategy="both", round=0, labelled=count)
    rows = [first]
    for strategy in ("suggest", "random"):
        current, pool = labelled, unlabeled
        previous = work / (f"{name}-select-{tag}-round0-seed{seed}")
        for index in range(1, rounds + 1):
            folder = work / f"{name}-{strategy}-{tag}-round{index}-seed{seed}-data"
            if strategy == "suggest":
                chosen = suggested(previous, pool, step, folder,
                                   work / f"{name}-{strategy}-{tag}-seed{seed}.log")
            else:
                names = sorted(p.name for p in pool.iterdir())
                order = np.random.default_rng([seed, index]).permutation(len(names))
                chosen = [names[i] for i in order[:step]]
            current, pool = add_labels(current, pool, chosen, folder)
            variant = f"select-{strategy}-{tag}-round{index}"
            row = measure(name, work, options, seed, variant, train_path=current)
            row.update(variant=f"round {index}", strategy=strategy, round=index,
                       labelled=sum(1 for _ in (current / "images").iterdir()))
            rows.append(row)
            previous = work / f"{name}-{variant}-seed{seed}"
    return rows


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


def summarize_selection(rows: list[dict]) -> list[dict]:
    """Per data set, fraction, strategy and round: the test Dice's mean and std over seeds
    (round 0 counts for both strategies)."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        for strategy in (("suggest", "random") if row["strategy"] == "both"
                         else (row["strategy"],)):
            key = (row["data_set"], row["fraction"], strategy, row["round"])
            groups.setdefault(key, []).append(row["test_dice"])
    return [{"data_set": name, "fraction": fraction, "strategy": strategy, "round": index,
             "seeds": len(values), "test_dice_mean": round(float(np.mean(values)), 4),
             "test_dice_std": round(float(np.std(values)), 4)}
            for (name, fraction, strategy, index), values in sorted(groups.items())]


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
    parser.add_argument("--selection", action="store_true",
                        help="the selection curve (suggest against random) instead")
    parser.add_argument("--round-fraction", type=float, default=0.05,
                        help="--selection: share of train/ added in each of the two rounds")
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
    if arguments.selection:
        name = f"label-selection-{arguments.label}.json"
        for data_set in arguments.data_sets:
            for fraction in arguments.fractions:
                for seed in arguments.seeds:
                    rows += selection_curve(data_set, fraction, seed, work, options,
                                            arguments.round_fraction)
                    write_json(SCRIPT, name, {
                        "machine": info, "train_options": options, "work": str(work),
                        "round_fraction": arguments.round_fraction, "runs": rows,
                        "summary": summarize_selection(rows), "complete": False})
        print_table(rows, ["data_set", "fraction", "strategy", "round", "seed", "labelled",
                           "test_dice", "train_s", "over_budget"])
        summary = summarize_selection(rows)
        print()
        print_table(summary, list(summary[0]))
        path = write_json(SCRIPT, name, {
            "machine": info, "train_options": options, "work": str(work),
            "round_fraction": arguments.round_fraction, "runs": rows, "summary": summary,
            "complete": True})
        print(f"written: {path}")
        return
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
