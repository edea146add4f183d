"""Do the threshold and post-processing chosen on validation frames help on other ones?

For each trained run (a single model or one fold), its best model predicts every
validation image, whole, as training's tuning does. The validation images are split
at random into halves A and B, several times; on each split the threshold and
post-processing are chosen (``unet_cbam.postprocess.tune``, as training does) on
random subsets of A of the sizes asked for (and on all of A), under each rule asked
for (``--confidence``: 0 keeps any gain, as training did before; 0.95 is training's
default), and each choice is scored on B, beside plain thresholding at 0.5 with no
post-processing. Validation images only: the test split is neither used nor read.

    python -m benchmarks.postprocess_holdout RUN [RUN ...] --label kvasir

Prints a table (mean Dice on B over the repeats, of the class the run tunes on) and
writes ``benchmarks/results/postprocess_holdout/postprocess-holdout-<label>.json`` (commit,
date, CPU and versions first).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import print_table, rule_name, run_validation_pairs, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem

PLAIN = "0.5, none"


def holdout_scores(pairs, class_names, fingerprint, tune_on, sizes, repeats, seed=0,
                   confidences=(0.0,)) -> dict[str, list[float]]:
    """{choice: Dice on half B for each repeat}; choices: ``PLAIN`` and
    ``"tuned on N, RULE"`` for each subset size N of half A (capped at the half; the whole
    half is marked ``"(all of A)"``) and each rule (``rule_name`` of a confidence)."""
    from unet_cbam import postprocess
    from unet_cbam.inference import probabilities_to_labels

    rng = np.random.default_rng(seed)
    label = list(class_names).index(tune_on) if tune_on else 1
    half = len(pairs) // 2
    counts = sorted({min(int(size), half) for size in sizes} | {half})
    scores: dict[str, list[float]] = {PLAIN: []}
    for _ in range(repeats):
        order = rng.permutation(len(pairs))
        a = [pairs[i] for i in order[:half]]
        b = [pairs[i] for i in order[half:]]
        scores[PLAIN].append(postprocess.pooled_dice(
            [(probabilities_to_labels(p, 0.5), t) for p, t in b], label))
        for count in counts:
            subset = [a[i] for i in rng.choice(half, count, replace=False)]
            for confidence in confidences:
                chosen = postprocess.tune(subset, class_names, fingerprint, tune_on,
                                          confidence=confidence)
                threshold = chosen.threshold
                labels = [(postprocess.postprocess(probabilities_to_labels(p, threshold),
                                                   chosen, class_names), t) for p, t in b]
                key = (f"tuned on {count}" + (" (all of A)" if count == half else "")
                       + f", {rule_name(confidence)}")
                scores.setdefault(key, []).append(postprocess.pooled_dice(labels, label))
    return scores


def run_scores(run_dir: Path, sizes, repeats, confidences
               ) -> tuple[int, dict[str, list[float]]]:
    pairs, names, fingerprint, tune_on = run_validation_pairs(run_dir, every_image=True,
                                                              binary=True)
    return len(pairs), holdout_scores(pairs, names, fingerprint, tune_on, sizes, repeats,
                                      confidences=confidences)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="trained run folders (or folds)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64],
                        help="subset sizes of half A to tune on (all of A is always tried)")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--confidence", nargs="+", type=float, default=[0.0, 0.95],
                        help="the tuner's rules to compare (0: keep any gain)")
    parser.add_argument("--label", required=True)
    args = parser.parse_args(argv)

    rows, results = [], []
    for run_dir in args.runs:
        images, scores = run_scores(run_dir, args.sizes, args.repeats, args.confidence)
        row = {"run": str(run_dir), "validation images": images}
        row.update({key: float(np.mean(values)) for key, values in scores.items()})
        rows.append(row)
        results.append({"run": str(run_dir), "validation_images": images, "scores": scores})
        print(f"{run_dir}: " + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in scores.items()),
              flush=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    mean = {"run": "mean"}
    mean.update({key: float(np.mean([row[key] for row in rows if key in row]))
                 for key in columns[2:]})
    print_table([*rows, mean], columns)
    path = write_json(SCRIPT, f"postprocess-holdout-{args.label}.json",
                      {"sizes": args.sizes, "repeats": args.repeats,
                       "confidence": args.confidence, "runs": results})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
