"""How the threshold and post-processing are chosen: one model, every choice.

A trained binary run's best model predicts its own validation images (as
training does at its end; a cross-validation run: its folds' out-of-fold
predictions, and the rows are the fold ensemble's); the threshold and
post-processing are chosen on each class's validation Dice in turn
(``unet_cbam.postprocess.tune`` with ``tune_on``; ``--judge`` names fewer),
under each rule asked for (``--confidence``; default: training's), and each
choice, and plain thresholding at 0.5, goes through ``predict.py --truth`` on a
test folder (its ``main``, in this process: the command's code, without importing
TensorFlow again for every row). The test Dice of every class is reported: the
test split is scored, never used for a choice. Same model for every row, so the
rows differ only by the choice.

    python -m benchmarks.tune_on --run RUN --test DIR --label isbi

``DIR`` holds ``images/`` and ``masks/``. Prints a table and writes
``benchmarks/results/tune_on/tune_on-<label>.json`` (commit, date, CPU and versions
first). The copies of the run (one per choice) and their predictions go to
``--work`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import print_table, rule_name, run_validation_pairs, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem


def _folds(run_dir: Path) -> list:
    """The fold runs of a cross-validation run folder; empty for a single run."""
    from unet_cbam.run import RunFolder

    run = RunFolder(run_dir)
    return [] if run.model_path.is_file() else run.folds()


def _class_names(run_dir: Path) -> list[str]:
    from unet_cbam.run import RunFolder

    folds = _folds(run_dir)
    return list((folds[0] if folds else RunFolder(run_dir)).class_names)


def _validation(run_dir: Path):
    """(validation pairs, fingerprint): a single run's best model on its validation
    images, or a cross-validation run's out-of-fold predictions, as training chooses on
    them."""
    from unet_cbam.folds import out_of_fold_predictions
    from unet_cbam.run import RunFolder

    folds = _folds(run_dir)
    if folds:
        return out_of_fold_predictions(RunFolder(run_dir), len(folds)), \
            folds[0].read_fingerprint()
    pairs, _, fingerprint, _ = run_validation_pairs(run_dir)
    return pairs, fingerprint


def choices(run_dir: Path, judges: list[str] | None = None,
            confidences: list[float] | None = None) -> tuple[list[dict], list[str]]:
    """[{judge, rule, inference}] for the run's best model (or its folds' ensemble): one
    choice per judged class (default: each of the two) and rule (default: training's),
    and the class names. Classes are checked before any prediction."""
    from unet_cbam import postprocess

    names = _class_names(run_dir)
    if len(names) != 2:
        raise SystemExit(f"{run_dir}: {len(names)} classes; tune_on needs two")
    unknown = sorted(set(judges or []) - set(names))
    if unknown:
        raise SystemExit(f"--judge {', '.join(unknown)}: not a class of {run_dir} ({names})")
    pairs, fingerprint = _validation(run_dir)
    return ([{"judge": name, "rule": rule_name(confidence),
              "inference": postprocess.tune(pairs, names, fingerprint, name,
                                            confidence=confidence).to_config()}
             for name in (judges or names)
             for confidence in (confidences or [postprocess.CONFIDENCE])], names)


def _copy_with(run_dir: Path, copy: Path, inference: dict | None) -> None:
    """``run_dir`` at ``copy`` with its choice replaced: a single run copied, its
    ``config.yaml`` rewritten; a cross-validation run's folds linked, its
    ``cv_metrics.json`` rewritten."""
    from unet_cbam.run import RunFolder

    shutil.rmtree(copy, ignore_errors=True)
    run = RunFolder(run_dir)
    folds = _folds(run_dir)
    if folds:
        copy.mkdir(parents=True)
        for fold in folds:
            (copy / fold.path.name).symlink_to(fold.path, target_is_directory=True)
        metrics = json.loads(run.cv_metrics_path.read_text()) \
            if run.cv_metrics_path.is_file() else {}
        metrics["inference"] = inference
        (copy / run.cv_metrics_path.name).write_text(json.dumps(metrics, indent=2))
        return
    shutil.copytree(run_dir, copy)
    if inference is not None:
        folder = RunFolder(copy)
        folder.write_config(dataclasses.replace(folder.config, inference=inference))


def compare(run_dir: Path, test: Path, work: Path, judges: list[str] | None = None,
            confidences: list[float] | None = None) -> list[dict]:
    """A row per choice (and one for plain 0.5 thresholding): what was chosen, the
    validation Dice it was chosen on, and the test Dice of every class."""
    from unet_cbam.cli.predict import main as predict_main

    tuned, names = choices(run_dir, judges, confidences)
    plain = {"judge": "none (0.5, no post-processing)", "rule": "-", "inference": None}
    rows = []
    for choice in [*tuned, plain]:
        inference = choice["inference"]
        copy = work / f"run-{len(rows)}"
        _copy_with(run_dir, copy, inference)
        output = work / f"test-{len(rows)}"
        shutil.rmtree(output, ignore_errors=True)
        status = predict_main(["--model", str(copy), "--input", str(test / "images"),
                               "--output", str(output), "--truth", str(test / "masks"),
                               "--quiet", *([] if inference else ["--no-postprocess"])])
        if status != 0:
            raise SystemExit(f"predict.py on {copy} exited {status}")
        evaluation = json.loads((output / "evaluation.json").read_text())
        row = {"chosen on": choice["judge"], "rule": choice["rule"],
               "threshold": inference["threshold"] if inference else 0.5,
               "steps": ", ".join(
                   f"{name}: " + (", ".join(k for k in ("largest_only", "fill_holes")
                                            if steps[k]) or "-")
                   + (f", min_size {steps['min_size']}" if steps["min_size"] else "")
                   for name, steps in inference["classes"].items()) if inference else "-",
               "validation dice (chosen on)": (
                   inference["classes"][names[1]]["validation_dice"][1] if inference else None)}
        for name in names:
            row[f"test dice {name}"] = evaluation["classes"][name]["pooled_dice"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True,
                        help="a trained binary run folder, or a cross-validation run's")
    parser.add_argument("--test", type=Path, required=True, help="folder with images/, masks/")
    parser.add_argument("--label", required=True, help="results/tune_on-LABEL.json")
    parser.add_argument("--work", type=Path, help="keep the copies here (default: temporary)")
    parser.add_argument("--judge", nargs="+", help="classes to choose on (default: both)")
    parser.add_argument("--confidence", nargs="+", type=float,
                        help="the tuner's rules (0: keep any gain; default: training's)")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        work = arguments.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        rows = compare(arguments.run.resolve(), arguments.test.resolve(), work,
                       arguments.judge, arguments.confidence)
    print_table(rows, list(rows[0]))
    print("written:", write_json(SCRIPT, f"tune_on-{arguments.label}.json",
                                 {"run": str(arguments.run), "test": str(arguments.test),
                                  "judge": arguments.judge,
                                  "confidence": arguments.confidence, "rows": rows}))


if __name__ == "__main__":
    main()
