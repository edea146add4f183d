"""Which class the threshold and post-processing are chosen on: one model, every choice.

A trained binary run's best model predicts its own validation images (as
training does at its end); the threshold and post-processing are chosen on
each class's validation Dice in turn (``unet_cbam.postprocess.tune`` with
``tune_on``), and each choice, and plain thresholding at 0.5, goes through
``predict.py --truth`` on a test folder. The test Dice of every class is
reported: the test split is scored, never used for a choice. Same model for
every row, so the rows differ only by the choice.

    python benchmarks/tune_on.py --run RUN --test DIR --label isbi

``DIR`` holds ``images/`` and ``masks/``. Prints a table and writes
``benchmarks/results/tune_on-<label>.json`` (commit, date, CPU and versions
first). The copies of the run (one per choice) and their predictions go to
``--work`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print_table, write_json  # noqa: E402


def choices(run_dir: Path) -> tuple[dict[str, dict], list[str]]:
    """{judged class: its inference section} for the run's best model, and the class names."""
    import keras

    from unet_cbam import postprocess
    from unet_cbam.run import RunFolder
    from unet_cbam.training import prepare_data, validation_predictions

    run = RunFolder(run_dir)
    config = run.config
    data = prepare_data(config, split=run.read_split(), progress=False)
    model = keras.saving.load_model(run.model_path, safe_mode=True, compile=False)
    pairs = validation_predictions(model, data.val, config.model.divisor)
    if len(data.class_names) != 2:
        raise SystemExit(f"{run_dir}: {len(data.class_names)} classes; tune_on needs two")
    return ({name: postprocess.tune(pairs, data.class_names, data.fingerprint, name)
             for name in data.class_names}, list(data.class_names))


def compare(run_dir: Path, test: Path, work: Path) -> list[dict]:
    """A row per choice (and one for plain 0.5 thresholding): what was chosen, the
    validation Dice it was chosen on, and the test Dice of every class."""
    from unet_cbam.run import RunFolder

    tuned, names = choices(run_dir)
    rows = []
    for judge, inference in [*tuned.items(), ("none (0.5, no post-processing)", None)]:
        copy = work / f"run-{len(rows)}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run_dir, copy)
        folder = RunFolder(copy)
        if inference is not None:
            folder.write_config(dataclasses.replace(folder.config, inference=inference))
        output = work / f"test-{len(rows)}"
        shutil.rmtree(output, ignore_errors=True)
        subprocess.run([sys.executable, "predict.py", "--model", str(copy), "--input",
                        str(test / "images"), "--output", str(output), "--truth",
                        str(test / "masks"), "--quiet",
                        *([] if inference else ["--no-postprocess"])],
                       cwd=ROOT, check=True)
        evaluation = json.loads((output / "evaluation.json").read_text())
        row = {"chosen on": judge,
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
    parser.add_argument("--run", type=Path, required=True, help="a trained binary run folder")
    parser.add_argument("--test", type=Path, required=True, help="folder with images/, masks/")
    parser.add_argument("--label", required=True, help="results/tune_on-LABEL.json")
    parser.add_argument("--work", type=Path, help="keep the copies here (default: temporary)")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        work = arguments.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        rows = compare(arguments.run.resolve(), arguments.test.resolve(), work)
    print_table(rows, list(rows[0]))
    print("written:", write_json(f"tune_on-{arguments.label}.json",
                                 {"run": str(arguments.run), "test": str(arguments.test),
                                  "rows": rows}))


if __name__ == "__main__":
    main()
