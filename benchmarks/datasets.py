"""Accuracy on the shared data sets, run as a user runs the tool.

For each data set: ``train.py`` on its training split (with the options
given, by default none but ``--time-budget``), then ``predict.py --truth`` on
its test split, and the pooled test Dice of the class of interest (CTC
nuclei and Kvasir-SEG: the foreground; ISBI 2012: the membrane, mask value
0), or for LabelMeFacade's 9 classes the pooled test IoU of each class and
their mean (``test_score`` is that mean IoU there, the Dice elsewhere). Test
splits are only predicted and scored, never used for a choice. Each run's
wall time is set against the time budget (``over_budget``: the share over it;
the budget covers the whole train.py command).
Prints a table and writes ``benchmarks/results/datasets/datasets-<label>.json``
(commit, date, CPU and versions recorded first).

    python -m benchmarks.datasets --time-budget 20m                       # auto-configured
    python -m benchmarks.datasets --label old --train-options "--epochs 10 --steps-per-epoch 40
        --batch-size 8 --patch-size 128 --normalize bitdepth --binary-threshold 0"
    python -m benchmarks.datasets --quick                                 # a few minutes
    python -m benchmarks.datasets --variants ablation --seeds 1 2 3       # issue 10's ablation
    python -m benchmarks.datasets --variants peers                        # issue 9's peers
    python -m benchmarks.datasets --variants none="--attention none" folds="--folds 5"
    python -m benchmarks.datasets --variants full-folds="--folds 5 --full-folds"
    python -m benchmarks.datasets --data-sets labelmefacade --variants peers hand-flagged

Each variant (NAME="train.py options") runs on every data set and seed; the
summary gives each data set and variant the mean and standard deviation over
the seeds of the validation Dice (what a choice may look at) and of the test
Dice (reported, never chosen on).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, print_table, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem

SHARED = ROOT.parent / "shared" / "datasets"
#: name: (train folder, test folder, input channels, class scored; None: the mean IoU
#: over the classes)
DATA_SETS = {
    "ctc": ("ctc-sim-nuclei/train", "ctc-sim-nuclei/test", 1, "foreground"),
    "kvasir": ("kvasir-seg/train", "kvasir-seg/test", 3, "foreground"),
    "isbi": (None, None, 1, "background"),  # split by slice number below
    "labelmefacade": ("labelmefacade/train", "labelmefacade/test", 3, None),
}
#: LabelMeFacade's class colours (its README), in the order the plan finds them.
FACADE_COLORS = [[0, 0, 0], [0, 0, 128], [0, 128, 0], [0, 128, 128], [128, 0, 0],
                 [128, 0, 128], [128, 64, 0], [128, 128, 0], [128, 128, 128]]
ISBI_TRAIN, ISBI_TEST = range(0, 24), range(24, 30)


def isbi_split(work: Path) -> tuple[Path, Path]:
    """ISBI 2012's fixed split (README): slices 0-23 train, 24-29 test, as links."""
    source = SHARED / "isbi2012-membrane"
    folders = []
    for name, stems in (("train", ISBI_TRAIN), ("test", ISBI_TEST)):
        for kind in ("images", "masks"):
            (work / name / kind).mkdir(parents=True, exist_ok=True)
            for index in stems:
                link = work / name / kind / f"slice{index:02d}.png"
                if not link.exists():
                    link.symlink_to(source / kind / f"slice{index:02d}.png")
        folders.append(work / name)
    return folders[0], folders[1]


def run(command: list[str], log: Path) -> float:
    """Run ``command`` (output to ``log``); its wall-clock seconds; raise on failure."""
    started = time.perf_counter()
    with log.open("a") as stream:
        stream.write("$ " + shlex.join(command) + "\n")
        stream.flush()
        result = subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if result.returncode:
        raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}); see {log}")
    return time.perf_counter() - started


#: --variants ablation: the attention placements compared in issue 10.
ABLATION = {
    "none": "--attention none",
    # The default: x + CBAM(x) on skips 1-3 since 2026-12-03 (on every skip before; the
    # paper's CBAM(x) alone before 2026-12-02). The other names keep their meaning.
    "cbam": "",
    "cbam-all": "--attention-levels all",
    "cbam-no-identity": "--no-attention-identity --attention-levels all",
    "cbam-deep": "--attention-levels 2 3",
    "cbam-decoder": "--attention-position decoder --attention-levels all",
    "cbam-encoder": "--attention-position encoder --attention-levels all",
}
#: --variants peers: the default against issue 9's peers (d), at the same budget.
#: ``--sm-unet`` (not a train.py option) trains through benchmarks/peer_train.py.
PEERS = {
    "default": "",
    "none": "--attention none",
    "sm-unet-resnet18": "--sm-unet --encoder resnet18 --attention none",
}


#: --variants hand-flagged: what a user had to type before the classes were read from the
#: masks (LabelMeFacade); the plan must give the same run.
HAND_FLAGGED = {"hand-flagged": "--num-classes 9 --mask-encoding rgb --class-colors "
                + shlex.quote(json.dumps(FACADE_COLORS, separators=(",", ":")))}


#: Not a train.py option: train each of the ``--folds N`` folds by its own ``train.py
#: --fold k``, so that every fold gets the whole ``--time-budget`` (nnU-Net's ensembles:
#: N fully trained folds, N times the compute of one model), and score each fold alone
#: on the test split too (``member_test_dice``). Without it, ``--folds N`` shares the
#: budget among the folds.
FULL_FOLDS = "--full-folds"


def parse_variants(items: list[str]) -> dict[str, str]:
    """``["ablation"]``, ``["peers"]``, ``["hand-flagged"]`` or ``["name=options", ...]``
    -> {name: options}."""
    variants: dict[str, str] = {}
    presets = {"ablation": ABLATION, "peers": PEERS, "hand-flagged": HAND_FLAGGED}
    for item in items:
        if item in presets:
            variants.update(presets[item])
            continue
        name, separator, options = item.partition("=")
        if not separator or not name:
            raise SystemExit(f"--variants: {item!r} is not NAME=OPTIONS (or 'ablation')")
        variants[name] = options
    return variants


def measure(name: str, work: Path, train_options: list[str], seed: int,
            variant: str = "default", train_path: Path | None = None) -> dict:
    """Train ``variant`` (its ``train_options``) on data set ``name``'s training split (or
    on ``train_path``, a part of it), predict and score its test split: the result row."""
    train_dir, test_dir, channels, scored = DATA_SETS[name]
    if name == "isbi":
        split_train, test_path = isbi_split(work / "isbi-data")
    else:
        split_train, test_path = SHARED / train_dir, SHARED / test_dir
    train_path = train_path or split_train
    stem = f"{name}-{variant}-seed{seed}" if variant != "default" else f"{name}-seed{seed}"
    run_dir, predictions = work / stem, work / f"{stem}-test"
    log = work / f"{stem}.log"
    program = ["train.py"]
    if "--sm-unet" in train_options:
        program = ["-m", "benchmarks.peer_train"]
        train_options = [option for option in train_options if option != "--sm-unet"]
    base = [sys.executable, *program, "--data", str(train_path), "--input-channels",
            str(channels), "--seed", str(seed), "--output", str(run_dir), "--quiet"]
    full_folds = FULL_FOLDS in train_options
    if full_folds:  # one train.py --fold k per fold: each gets the whole --time-budget
        train_options = [option for option in train_options if option != FULL_FOLDS]
        folds = fold_count(train_options)
        train_seconds = sum(run([*base, *train_options, "--fold", str(k)], log)
                            for k in range(folds))
    else:
        train_seconds = run([*base, *train_options], log)

    def predict(model: Path, output: Path) -> float:
        return run([sys.executable, "predict.py", "--model", str(model), "--input",
                    str(test_path / "images"), "--output", str(output), "--truth",
                    str(test_path / "masks"), "--quiet"], log)

    predict_seconds = predict(run_dir, predictions)
    row = result_row(name, variant, seed, run_dir, predictions, train_seconds,
                     predict_seconds)
    if full_folds:  # each member alone on the test split: one model's spread, same budget
        row["member_test_dice"] = []
        for k in range(folds):
            member = work / f"{stem}-test-fold{k}"
            predict(run_dir / f"fold_{k}", member)
            summary = json.loads((member / "evaluation.json").read_text())
            row["member_test_dice"].append(summary["classes"][scored]["pooled_dice"]
                                           if scored else summary["pooled_mean_dice"])
    budget = budget_seconds(train_options)
    if budget:
        row["budget_s"] = budget
        row["over_budget"] = round(train_seconds / (budget * (folds if full_folds else 1))
                                   - 1, 4)
    return row


def budget_seconds(options: list[str]) -> float | None:
    """The ``--time-budget`` among train.py ``options``, in seconds (None: none)."""
    from unet_cbam.config import parse_duration

    for index, option in enumerate(options):
        if option == "--time-budget" and index + 1 < len(options):
            value = options[index + 1]
            return None if value.lower() == "none" else parse_duration(value)
    return None


def fold_count(options: list[str]) -> int:
    """The ``--folds N`` among train.py ``options`` (``--full-folds`` needs one)."""
    for index, option in enumerate(options):
        if option == "--folds" and index + 1 < len(options):
            return int(options[index + 1])
        if option.startswith("--folds="):
            return int(option.split("=", 1)[1])
    raise SystemExit(f"{FULL_FOLDS} needs --folds N among the variant's options")


def result_row(name: str, variant: str, seed: int, run_dir: Path, predictions: Path,
               train_seconds: float, predict_seconds: float) -> dict:
    """A measured run's row: the test and validation Dice of the class scored (or, with no
    class scored, the means over the classes, IoU as ``test_score`` and per class), and its
    config (a cross-validation run's: fold 0's, and the folds' mean validation Dice)."""
    scored = DATA_SETS[name][3]
    summary = json.loads((predictions / "evaluation.json").read_text())
    folds = sorted(run_dir.glob("fold_*"))
    if folds:  # a cross-validation run: the folds' mean validation score
        cv = json.loads((run_dir / "cv_metrics.json").read_text())
        val_dice = cv["classes"][scored]["dice_mean"] if scored else cv["mean_dice"]
        val_iou = None if scored else cv["mean_iou"]
        history = (folds[0] / "history.csv").read_text().strip().splitlines()
        config = (folds[0] / "config.yaml").read_text()
        wall = cv.get("wall_seconds")
    else:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        val_dice = metrics["classes"][scored]["dice"] if scored else metrics["mean_dice"]
        val_iou = None if scored else metrics["mean_iou"]
        history = (run_dir / "history.csv").read_text().strip().splitlines()
        config = (run_dir / "config.yaml").read_text()
        wall = metrics.get("wall_seconds")
    test_dice = (summary["classes"][scored]["pooled_dice"] if scored
                 else summary["pooled_mean_dice"])
    scores = {"test_score": test_dice, "val_score": val_dice}
    if not scored:
        scores = {"test_score": summary["pooled_mean_iou"], "val_score": val_iou,
                  "test_iou": {n: c["pooled_iou"] for n, c in summary["classes"].items()}}
    return {
        "data_set": name, "variant": variant, "seed": seed,
        "class": scored or "mean IoU",
        **scores,
        "test_dice": test_dice,
        "test_images": summary["images"],
        "val_dice": val_dice,
        "epochs_run": len(history) - 1,
        "train_s": round(train_seconds, 1), "predict_s": round(predict_seconds, 1),
        "wall_seconds": wall,  # train.py's own account of where its time went
        "config": config,
    }


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation (n - 1; 0 for one seed) over seeds per data set
    and variant: the seed spread the README's results table and the issue-40 studies quote
    (results files written before 2026-12-07, 20:00 UTC hold population deviations)."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["data_set"], row["variant"]), []).append(row)
    summary = []
    for (name, variant), group in groups.items():
        entry = {"data_set": name, "variant": variant, "seeds": len(group)}
        for key in ("val_score", "test_score", "val_dice", "test_dice", "over_budget"):
            values = [row[key] for row in group if row.get(key) is not None]
            if not values:
                continue
            entry[f"{key}_mean"] = round(float(np.mean(values)), 4)
            entry[f"{key}_std"] = round(float(np.std(values, ddof=1)), 4) \
                if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-sets", nargs="+", default=list(DATA_SETS),
                        choices=list(DATA_SETS))
    parser.add_argument("--time-budget", default="20m",
                        help="train.py --time-budget (none: leave it out)")
    parser.add_argument("--train-options", default="",
                        help="more train.py options, one string")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--variants", nargs="+", default=["default="],
                        help="NAME=\"train.py options\" each, 'ablation' (none, cbam, "
                             "cbam-no-identity, cbam-deep, cbam-decoder, cbam-encoder), "
                             "'peers' (default, none, sm-unet-resnet18) or 'hand-flagged' "
                             "(LabelMeFacade's classes given by hand)")
    parser.add_argument("--label", default="auto", help="results file: datasets-LABEL.json")
    parser.add_argument("--work", type=Path, help="keep runs here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true",
                        help="1-minute budget, one seed, CTC only: checks the script")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.time_budget, arguments.seeds, arguments.data_sets = "1m", [42], ["ctc"]
        arguments.label = f"{arguments.label}-quick"
    options = shlex.split(arguments.train_options)
    if arguments.time_budget.lower() != "none":
        options = ["--time-budget", arguments.time_budget, *options]
    info = machine()  # before measuring: the commit measured, not a later one
    work = arguments.work or Path(tempfile.mkdtemp(prefix="unet_cbam-datasets-"))
    work.mkdir(parents=True, exist_ok=True)
    variants = parse_variants(arguments.variants)
    rows = []
    # Seeds outside variants: each seed compares every variant close together in time (the
    # machine's speed drifts), and a run cut short still holds whole seeds. The results file
    # is rewritten after every run, so what finished is kept.
    for name in arguments.data_sets:
        for seed in arguments.seeds:
            for variant, extra in variants.items():
                row = measure(name, work, options + shlex.split(extra), seed, variant)
                rows.append(row)
                print(f"{name} {variant} seed {seed}: test {row['class']} "
                      f"{row['test_score']:.3f} (train {row['train_s']:.0f} s, predict "
                      f"{row['predict_s']:.0f} s)", flush=True)
                write_json(SCRIPT, f"datasets-{arguments.label}.json", {
                    "machine": info, "train_options": options, "variants": variants,
                    "work": str(work), "runs": rows, "summary": summarize(rows),
                    "complete": False})
    print_table(rows, ["data_set", "variant", "seed", "class", "test_score", "val_score",
                       "epochs_run", "train_s", "over_budget", "predict_s"])
    summary = summarize(rows)
    print()
    print_table(summary, ["data_set", "variant", "seeds", "val_score_mean", "val_score_std",
                          "test_score_mean", "test_score_std", "over_budget_mean"])
    path = write_json(SCRIPT, f"datasets-{arguments.label}.json", {
        "machine": info, "train_options": options, "variants": variants, "work": str(work),
        "runs": rows, "summary": summary, "complete": True})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
