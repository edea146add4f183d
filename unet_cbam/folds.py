"""k-fold cross-validation: one ordinary run per fold, their summary
(``cv_metrics.json``), and the ensemble's threshold and post-processing chosen on the
out-of-fold predictions."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from unet_cbam import postprocess as postprocessing
from unet_cbam import training
from unet_cbam.config import RunConfig, TunedInference
from unet_cbam.data.prepare import prepare_data
from unet_cbam.run import CV_METRICS_FILE, FOLD_PREFIX, RunFolder, class_names
from unet_cbam.training import TrainResult
from unet_cbam.validation import log_inference, validation_predictions

logger = logging.getLogger(__name__)


def train_folds(config: RunConfig, run_dir: str | Path | RunFolder, resume: bool = False,
                progress: bool = True, started: float | None = None,
                **kwargs) -> list[TrainResult]:
    """k-fold cross-validation: fold k trains into ``run_dir/fold_k`` (an ordinary run).

    All folds one after the other, or only ``config.train.fold``. With a time budget and
    all folds, the budget covers them all, counted from ``started`` (the command's start,
    default now), and the ensemble's tuning: each fold gets an equal share of what is left
    when it starts, less the ensemble tuning's share (estimated from the first fold's own
    tuning); a fold resumed keeps the share it was planned with. ``cv_metrics.json`` is
    written once every fold has its metrics (also when the last of several machines, each
    training one fold, finishes). ``kwargs`` go to ``train``.
    """
    started = time.perf_counter() if started is None else started
    run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    train_cfg = config.train
    if train_cfg.folds is None:
        raise ValueError("train_folds needs train.folds (the fold count)")
    if run.exists():
        raise FileExistsError(f"{run.path}: holds a single run; choose another --output for "
                              "cross-validation")
    if run.path.is_dir():
        others = sorted(p.name for p in run.path.iterdir()
                        if not p.name.startswith(FOLD_PREFIX) and p.name != CV_METRICS_FILE)
        if others:
            raise FileExistsError(f"{run.path}: holds other files ({', '.join(others[:3])}); "
                                  "choose another --output for cross-validation")
    indices = [train_cfg.fold] if train_cfg.fold is not None else list(range(train_cfg.folds))
    shared_budget = train_cfg.time_budget is not None and train_cfg.fold is None
    results, timings = [], {}  # the step time: measured by the first fold, for all
    ensemble_tuning = 0.0
    for position, index in enumerate(indices):
        fold = run.fold(index)
        logger.info("fold %d of %d -> %s", index, train_cfg.folds, fold.path)
        fold_train = dataclasses.replace(train_cfg, fold=index)
        now = time.perf_counter()
        if shared_budget:
            if resume and fold.exists() and fold.config.train.time_budget is not None:
                share = fold.config.train.time_budget  # its plan: kept
            else:
                left = train_cfg.time_budget - (now - started) - ensemble_tuning
                share = max(1.0, left / (len(indices) - position))
            fold_train = dataclasses.replace(fold_train, time_budget=share)
        fold_config = dataclasses.replace(config, train=fold_train)
        results.append(training.train(fold_config, fold, resume=resume, progress=progress,
                                      step_timings=timings, started=now, **kwargs))
        if position == 0 and results[0].metrics:  # the ensemble's tuning reads as many
            ensemble_tuning = results[0].metrics.get("wall_seconds", {}).get(  # images
                "final_scores_tuning_and_saves", 0.0)
    if not all(result.chief for result in results):  # another worker of a multi-worker run
        return results
    summary = write_cv_metrics(run, train_cfg.folds)
    if summary is not None:
        summary["inference"] = tune_folds(run, train_cfg.folds).to_config()
        summary["wall_seconds"] = {"total": round(time.perf_counter() - started, 1),
                                   "budget": train_cfg.time_budget}
        run.write_cv_metrics(summary)
    return results


def out_of_fold_predictions(run: RunFolder, folds: int
                            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each fold's best model on its own validation images (``validation_predictions``,
    an equal share of ``MAX_IMAGES`` each): what the ensemble's choice is made on."""
    pairs, per_fold = [], max(1, postprocessing.MAX_IMAGES // folds)
    for index in range(folds):
        fold = run.fold(index)
        data = prepare_data(fold.config, split=fold.read_split(), progress=False)
        model = fold.load_model()
        pairs += validation_predictions(model, data.val, fold.config.model.divisor, per_fold)
    return pairs


def tune_folds(run: RunFolder, folds: int) -> TunedInference:
    """Threshold and post-processing for the fold ensemble, chosen on the out-of-fold
    predictions."""
    pairs = out_of_fold_predictions(run, folds)
    names = class_names(run.fold(0).config.data, run.fold(0).codec)
    tuned = postprocessing.tune(pairs, names, run.fold(0).read_fingerprint(),
                                run.fold(0).config.train.tune_on)
    log_inference(tuned)
    return tuned


def write_cv_metrics(run: RunFolder, folds: int) -> dict | None:
    """``cv_metrics.json``: each fold's validation scores, and their mean and standard
    deviation; None (nothing written) while a fold has no metrics yet."""
    metrics = []
    for index in range(folds):
        fold = run.fold(index)
        if not fold.metrics_path.is_file():
            logger.info("cv_metrics.json waits for %s", fold.path)
            return None
        metrics.append(fold.read_metrics())
    summary: dict = {"folds": folds, "per_fold": metrics, "classes": {}}
    for name in metrics[0]["classes"]:
        summary["classes"][name] = {
            f"{score}_{stat}": float(function([m["classes"][name][score] for m in metrics]))
            for score in ("dice", "iou") for stat, function in (("mean", np.mean),
                                                                ("std", np.std))}
    for score in ("mean_dice", "mean_iou"):
        values = [m[score] for m in metrics]
        summary[score] = float(np.mean(values))
        summary[f"{score}_std"] = float(np.std(values))
    run.write_cv_metrics(summary)
    return summary

