"""The automatic configuration: settings chosen from the data's fingerprint.

nnU-Net's lesson is that a pipeline configured from the data itself beats a
fixed recipe. Every setting left to ``auto`` (or none) is decided here by a
rule written in terms of the fingerprint (``unet_cbam.fingerprint``), never
of a particular data set, and recorded with its reason in the run's
``config.yaml`` (its ``plan`` section). A value given on the command line
or in ``--config`` is kept as it is.

The rules:

- normalisation (``normalize: auto``): float images, and integer images
  whose intensity range covers less than ``NARROW_RANGE`` of their bit
  depth's range, are clipped to that range and scaled to [0, 1]
  (``percentile``); otherwise the bit depth is kept (``bitdepth``). The
  range is from the 0.5th to the 99.5th percentile of all pixels, widened to
  those of the foreground pixels.
- training resolution (``scale: none``): the images' own without a time
  budget. With one, the step time measured at full resolution says how many
  passes over the training pixels the budget affords; under
  ``TARGET_PASSES``, images and masks are resampled by the factor that
  affords them, but never so far that the thinnest class's typical structure
  (fingerprint ``structure_width``) gets narrower than ``MIN_RESAMPLED_WIDTH``
  pixels, nor the median image's shorter side below ``MIN_SIDE_DIVISORS``
  cells of the model's coarsest grid. Thin membranes keep their resolution
  and small nuclei nearly theirs; large blobs in large frames are learnt
  from whole, smaller frames, many times over.
- patch size (``patch_size: none``): the median (resampled) image's shorter side,
  rounded down to the model's divisor, at most ``MAX_PATCH_SIDE`` rounded
  likewise: small images are not padded into huge patches, large ones are
  not cut into tiny ones.
- batch size (``batch_size: none``): ``BATCH_PIXELS`` pixels per batch, at
  least ``MIN_BATCH`` and at most ``MAX_BATCH`` patches.
- foreground oversampling (``foreground_oversampling: none``): nnU-Net's
  one third; one half when the rarest foreground class covers less than
  ``RARE_CLASS`` of the pixels.
- which class a foreground-centred patch is centred on (``class_sampling:
  none``): each foreground class with weight (its share of the pixels) to the
  power ``CLASS_SAMPLING_POWER``, -1/2: a class a hundred times rarer is drawn
  ten times as often, so rare classes are seen without the rarest taking over
  (inverse frequency, power -1, would give a 0.1% class nearly every centred
  patch of a scene). With one foreground class this is all of them.
- the class the threshold and post-processing are chosen on (``tune_on:
  none``, two classes only): the rarer of the two in the fingerprint. Its
  Dice moves most with a threshold or a component step, and it is most often
  the structure of interest: a small foreground object, or thin background
  membranes between large cells (a common encoding of EM data). Ties: the
  foreground.

The binary mask threshold is chosen from the masks' histogram before the
masks are decoded (``verify.resolve_binary_threshold``); the fingerprint
carries it and its reason into the plan.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from unet_cbam.config import RunConfig, format_duration
from unet_cbam.data.normalization import Normalization

#: Data using less than this share of its bit depth's range is rescaled by percentiles.
NARROW_RANGE = 0.25
#: Training pixels per batch: 8 patches of 256 x 256, the measured CPU default.
BATCH_PIXELS = 8 * 256 * 256
MIN_BATCH = 4
MAX_BATCH = 32
#: The largest patch side that keeps MIN_BATCH patches within BATCH_PIXELS.
MAX_PATCH_SIDE = math.isqrt(BATCH_PIXELS // MIN_BATCH)
#: A foreground class below this share of the pixels is rare.
RARE_CLASS = 0.01
DEFAULT_OVERSAMPLING = 1 / 3
RARE_OVERSAMPLING = 0.5
#: Foreground-centred patches draw their class with weight (share of the pixels) ** this.
CLASS_SAMPLING_POWER = -0.5


#: With a time budget, the resolution is lowered until the budget affords this many passes
#: over the training pixels ... Chosen on Kvasir-SEG's validation split, 20 minutes on a
#: 2-core Zen 5 EPYC: at 16 the plan took factor 0.6 (14 passes; 11 epochs, validation
#: Dice 0.57), where factor 0.3 (about 50 passes; 38 epochs) reached 0.78. Every run at
#: 16 passes was still learning at its last epoch: passes paid more than resolution above
#: the width floor below. (64 gives 0.3 on that machine; 48 would give
#: 0.35, not measured.) Data whose floor is at full resolution (ISBI, LabelMeFacade) plan
#: the same either way; CTC's nuclei go no lower than 0.85 (their floor).
TARGET_PASSES = 64
#: ... but the thinnest class's typical width stays at least this many pixels once resampled
#: (the resampling's boundary error, about a resampled pixel, stays a small share of it) ...
#: Chosen on validation splits, 3 to 5 seeds each, with 5 minutes on a 2-core Zen 5 EPYC
#: (1.1 passes at full resolution for Kvasir-SEG, near the AVX2 EPYC's 0.8 in 20 minutes):
#: Kvasir-SEG's polyps (105 px) did better at 21 px (factor 0.2: whole-image Dice 0.744 ±
#: 0.029, 5 seeds) than at 26 px (0.25: 0.671 ± 0.056); CTC's nuclei (25 px) scored the same
#: at 21 px (0.85: 0.850 ± 0.013, 3 seeds) as at their own 25 px (0.847 ± 0.014). (24, the
#: value before, rested on one CTC seed at factor 0.8.)
MIN_RESAMPLED_WIDTH = 20
#: ... and the median image's shorter side at least this many.
MIN_SIDE_DIVISORS = 4
#: Planned factors are rounded up to a multiple of this.
SCALE_STEP = 0.05


def plan_run(config: RunConfig, fingerprint: dict[str, Any]) -> RunConfig:
    """``config`` with every automatic setting decided, and ``config.plan`` saying why.

    With a time budget and no ``scale``, the resolution stays open (None) until
    the step time is measured: ``plan_scale`` decides it then.
    """
    data, train = config.data, config.train
    plan: dict[str, dict[str, Any]] = dict(config.plan or {})

    def decide(name: str, value: Any, reason: str) -> Any:
        plan[name] = {"value": value, "reason": reason}
        return value

    found = fingerprint.get("mask_classes")
    if found is not None:  # decided from the masks before verification (data.classes)
        decide("mask_encoding", found["encoding"], found["reason"])
        decide("num_classes", found["num_classes"], found["reason"])
        if found.get("colors"):
            decide("class_colors", found["colors"], "the colours found in the masks, in "
                   "ascending R:G:B order")
        if found.get("ignore_value") is not None:
            decide("ignore_value", found["ignore_value"], found["reason"])
    threshold = fingerprint.get("binary_threshold")
    if threshold is not None and data.binary_threshold in ("auto", threshold["value"]) \
            and threshold["reason"] != "given":
        data = dataclasses.replace(data, binary_threshold=decide(
            "binary_threshold", threshold["value"], threshold["reason"]))
    if data.normalization is None:
        normalization, reason = choose_normalization(data.normalize, fingerprint)
        decide("normalization", normalization, reason)
        data = dataclasses.replace(data, normalization=Normalization.from_config(normalization))
    if data.scale is None and config.train.time_budget is None:
        data = dataclasses.replace(data, scale=decide("scale", 1.0, (
            "no time budget: the images' own resolution (with one, the plan trades "
            "resolution for passes over the data)")))
    if data.patch_size is None:
        patch, reason = choose_patch_size(fingerprint, config.model.divisor, data.scale or 1.0)
        data = dataclasses.replace(data, patch_size=decide("patch_size", patch, reason))
    if train.batch_size is None:
        batch, reason = choose_batch_size(data.patch_size)
        train = dataclasses.replace(train, batch_size=decide("batch_size", batch, reason))
    if data.foreground_oversampling is None:
        value, reason = choose_oversampling(fingerprint)
        data = dataclasses.replace(data, foreground_oversampling=decide(
            "foreground_oversampling", value, reason))
    foreground = [name for name, share in list(fingerprint["class_frequency"].items())[1:]
                  if share > 0]
    if data.class_sampling is None and foreground:
        weights, reason = choose_class_sampling(fingerprint)
        data = dataclasses.replace(data, class_sampling=decide("class_sampling", weights,
                                                               reason))
    elif data.class_sampling is not None:
        unknown = sorted(set(data.class_sampling) - set(foreground))
        if unknown:
            raise ValueError(f"class_sampling names {', '.join(map(repr, unknown))}, not a "
                             "foreground class of these masks (they have: "
                             f"{', '.join(foreground) or 'none'})")
    train = plan_semi_supervised(train, data.unlabeled is not None, decide)
    names = list(fingerprint["class_frequency"])
    if train.tune_on is None and len(names) == 2:
        name, reason = choose_tune_on(fingerprint)
        train = dataclasses.replace(train, tune_on=decide("tune_on", name, reason))
    elif train.tune_on is not None and (train.tune_on not in names or len(names) != 2):
        raise ValueError(f"tune_on {train.tune_on!r} must be one of the two classes "
                         f"(here: {', '.join(names)})")
    return dataclasses.replace(config, data=data, train=train, plan=plan or None)


def choose_normalization(mode: str, fingerprint: dict[str, Any]
                         ) -> tuple[dict[str, Any], str]:
    """The frozen ``normalization`` for ``mode`` (auto, bitdepth, percentile, zscore)."""
    stats = fingerprint["intensity"]["all"]
    foreground = fingerprint["intensity"]["foreground"]
    is_float = any(dtype.startswith("float") for dtype in fingerprint["dtype"])
    # The 0.5-99.5th percentiles of all pixels, widened to those of the foreground: a small
    # bright foreground (nuclei) must not be clipped with the background's top.
    low, high = stats["p0.5"], stats["p99.5"]
    if foreground.get("pixels"):
        low = [min(a, b) for a, b in zip(low, foreground["p0.5"], strict=True)]
        high = [max(a, b) for a, b in zip(high, foreground["p99.5"], strict=True)]
    top = 1.0 if is_float else float(2 ** fingerprint["bit_depth"] - 1)
    used = (max(high) - min(low)) / top
    where = (f"the 0.5-99.5th percentiles of all and of foreground pixels span "
             f"{_values(low)} to {_values(high)}")
    if mode == "auto":
        if is_float:
            mode, reason = "percentile", f"float images ({where})"
        elif used < NARROW_RANGE:
            mode = "percentile"
            reason = (f"{where}: {used:.1%} of the {fingerprint['bit_depth']}-bit range "
                      f"(under {NARROW_RANGE:.0%})")
        else:
            return {"mode": "bitdepth"}, (
                f"{where}: {used:.0%} of the {fingerprint['bit_depth']}-bit range; "
                "dividing by the bit depth keeps the contrast")
    else:
        reason = "asked for"
    if mode == "bitdepth":
        if is_float and (min(stats["min"]) < 0 or max(stats["max"]) > 1):
            raise ValueError(
                f"normalize bitdepth: the float images hold values from {min(stats['min']):.4g} "
                f"to {max(stats['max']):.4g}, and float images are taken as they are; use "
                "normalize auto, percentile or zscore")
        return {"mode": "bitdepth"}, reason
    step = 1e-6 if is_float else 1.0  # a constant channel: any positive span
    high = [h if h > lo else lo + step for lo, h in zip(low, high, strict=True)]
    normalization: dict[str, Any] = {"mode": mode, "low": low, "high": high}
    if mode == "zscore":
        spans = [h - lo for lo, h in zip(low, high, strict=True)]
        means = [(m - lo) / s for m, lo, s in zip(stats["mean"], low, spans, strict=True)]
        stds = [max(sd / s, 1e-6) for sd, s in zip(stats["std"], spans, strict=True)]
        normalization.update(mean=sum(means) / len(means), std=sum(stds) / len(stds))
        reason += "; mean and standard deviation of the sampled pixels, after scaling"
    return normalization, f"{mode}: {reason}"


def choose_patch_size(fingerprint: dict[str, Any], divisor: int, scale: float = 1.0
                      ) -> tuple[int, str]:
    """(patch side, reason): the median image's shorter side (at ``scale``), a multiple of
    ``divisor``, at most ``MAX_PATCH_SIDE``."""
    height, width = (value * scale for value in fingerprint["image_size"]["median"])
    side = min(height, width)
    limit = max(divisor, MAX_PATCH_SIDE // divisor * divisor)
    patch = max(divisor, min(int(side) // divisor * divisor, limit))
    if side > limit:
        reason = (f"median image {width:.0f}x{height:.0f} is larger than {limit} (the largest side "
                  f"with {MIN_BATCH} patches in {BATCH_PIXELS} pixels a batch)")
    else:
        reason = (f"median image {width:.0f}x{height:.0f}: its shorter side, rounded down to a "
                  f"multiple of {divisor} (the model's divisor)")
    return patch, reason


def choose_scale(fingerprint: dict[str, Any], divisor: int, passes: float
                 ) -> tuple[float, str]:
    """The training resolution when the budget affords ``passes`` passes over the
    training pixels at full resolution (see the module's rules)."""
    if passes >= TARGET_PASSES:
        return 1.0, (f"the budget affords {passes:.1f} passes over the training pixels at "
                     f"full resolution (at least {TARGET_PASSES} wanted)")
    widths = fingerprint.get("structure_width")
    if not widths:
        return 1.0, "the fingerprint has no structure widths (written by an older version)"
    name, thinnest = min(widths.items(), key=lambda item: item[1])
    height, width = fingerprint["image_size"]["median"]
    narrowest = MIN_RESAMPLED_WIDTH
    floor = max(narrowest / thinnest, MIN_SIDE_DIVISORS * divisor / min(height, width))
    wanted = math.sqrt(passes / TARGET_PASSES)
    where = (f"the budget affords {passes:.1f} passes over the training pixels at full "
             f"resolution (at least {TARGET_PASSES} wanted)")
    scale = min(1.0, math.ceil(max(wanted, floor) / SCALE_STEP - 1e-9) * SCALE_STEP)
    if scale >= 1:
        return 1.0, (f"{where}, but the thinnest structures ({name}, {thinnest:g} px wide) "
                     f"must stay at least {narrowest} px wide")
    limit = "" if wanted >= floor else (
        f"; not lower: {name} structures ({thinnest:g} px wide) must stay at least "
        f"{narrowest} px wide, the median image's side {MIN_SIDE_DIVISORS * divisor}")
    return round(scale, 4), (f"{where}: resampled by {scale:g} it affords "
                             f"{passes / scale ** 2:.0f}{limit}")


def plan_scale(config: RunConfig, fingerprint: dict[str, Any], passes: float) -> RunConfig:
    """``config`` with ``scale`` decided for ``passes`` at full resolution, and the patch
    and batch sizes the plan chose re-planned for it."""
    scale, reason = choose_scale(fingerprint, config.model.divisor, passes)
    plan = dict(config.plan or {})
    plan["scale"] = {"value": scale, "reason": reason}
    data, train = dataclasses.replace(config.data, scale=scale), config.train
    if scale < 1 and "patch_size" in plan:
        patch, why = choose_patch_size(fingerprint, config.model.divisor, scale)
        data = dataclasses.replace(data, patch_size=patch)
        plan["patch_size"] = {"value": patch, "reason": why}
        if "batch_size" in plan:
            batch, why = choose_batch_size(patch)
            train = dataclasses.replace(train, batch_size=batch)
            plan["batch_size"] = {"value": batch, "reason": why}
    return dataclasses.replace(config, data=data, train=train, plan=plan)


def choose_batch_size(patch_size: int) -> tuple[int, str]:
    """(patches a batch, reason): about ``BATCH_PIXELS`` pixels a batch, ``MIN_BATCH`` to
    ``MAX_BATCH`` patches."""
    batch = min(MAX_BATCH, max(MIN_BATCH, BATCH_PIXELS // (patch_size * patch_size)))
    return batch, (f"{BATCH_PIXELS} pixels a batch ({MIN_BATCH} to {MAX_BATCH} patches) "
                   f"with {patch_size}x{patch_size} patches")


def choose_oversampling(fingerprint: dict[str, Any]) -> tuple[float, str]:
    """(share of patches centred on foreground, reason): from the rarest class's pixel share."""
    frequencies = list(fingerprint["class_frequency"].items())[1:]
    if not frequencies:
        return DEFAULT_OVERSAMPLING, "no foreground class"
    name, rarest = min(frequencies, key=lambda item: item[1])
    if rarest < RARE_CLASS:
        return RARE_OVERSAMPLING, (f"class {name} covers {rarest:.2%} of the pixels (under "
                                   f"{RARE_CLASS:.0%}): half the patches centred on foreground")
    return DEFAULT_OVERSAMPLING, (f"the rarest class, {name}, covers {rarest:.1%} of the "
                                  "pixels: a third of the patches centred on foreground "
                                  "(nnU-Net's rate)")


def choose_class_sampling(fingerprint: dict[str, Any]) -> tuple[dict[str, float], str]:
    """({foreground class: weight}, reason): weights (share of the pixels) **
    ``CLASS_SAMPLING_POWER``, summing to 1; classes with no pixels are left out."""
    shares = {name: share for name, share in list(fingerprint["class_frequency"].items())[1:]
              if share > 0}
    if len(shares) == 1:
        return {name: 1.0 for name in shares}, "one foreground class"
    raw = {name: share ** CLASS_SAMPLING_POWER for name, share in shares.items()}
    total = sum(raw.values())
    weights = {name: round(value / total, 4) for name, value in raw.items()}
    rarest = min(shares, key=shares.get)
    commonest = max(shares, key=shares.get)
    return weights, (
        f"each foreground class in proportion to 1/sqrt of its share of the pixels: "
        f"{rarest} ({shares[rarest]:.2%}) {weights[rarest]:.0%} of the centred patches, "
        f"{commonest} ({shares[commonest]:.1%}) {weights[commonest]:.0%}")


#: The semi-supervised mix (``unet_cbam.semisupervised``): setting -> (value, reason).
SEMI_SUPERVISED: dict[str, tuple[float, str]] = {
    "unlabeled_ratio": (1, (
        "one unlabelled patch per labelled patch: each adds a forward pass (its weak view) "
        "and a forward and backward pass (its strong view), so a time budget still affords "
        "many steps on the labels")),
    "unlabeled_weight": (1.0, "FixMatch's and UniMatch's weight of the unlabelled loss"),
    "unlabeled_rampup": (0.2, (
        "the unlabelled loss ramps up over the first fifth of the planned steps, while the "
        "model's pseudo-labels are poor (Laine and Aila's exp(-5 (1 - t)^2))")),
    "confidence": (0.95, (
        "pseudo-labels only where the weak view's probability is at least 0.95 "
        "(FixMatch's and UniMatch's threshold)")),
}


def plan_semi_supervised(train, unlabeled: bool, decide):
    """``train`` (a ``TrainConfig``) with each setting of ``SEMI_SUPERVISED`` it leaves open
    decided (``decide(name, value, reason)`` records it) when there are ``unlabeled``
    images; without them, such a setting given is an error, not ignored."""
    if not unlabeled:
        given = [name for name in SEMI_SUPERVISED if getattr(train, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set without unlabeled images; give the "
                             "folder with --unlabeled, or leave them out")
        return train
    chosen = {name: decide(name, value, reason)
              for name, (value, reason) in SEMI_SUPERVISED.items()
              if getattr(train, name) is None}
    return dataclasses.replace(train, **chosen)


def choose_tune_on(fingerprint: dict[str, Any]) -> tuple[str, str]:
    """The rarer of two classes (ties: the foreground), and why."""
    (background, low), (foreground, high) = fingerprint["class_frequency"].items()
    name, share = (background, low) if low < high else (foreground, high)
    return name, (f"{name} is the rarer class ({share:.1%} of the pixels): the threshold and "
                  "post-processing are chosen on its validation Dice")


#: With --time-budget and no steps_per_epoch: this many epochs at least (validations, best
#: model picks) and at most, around one pass over the training pixels per epoch.
MIN_BUDGET_EPOCHS = 5
MAX_BUDGET_EPOCHS = 50


#: With a time budget, validation after each epoch takes at most this share of an epoch's
#: training time; a dearer pass scores the first validation batches only (the same ones
#: every epoch; the final scores and the tuning use all of them).
VALIDATION_SHARE = 0.2


def plan_time_budget(config: RunConfig, step_seconds: float, pass_steps: int,
                     spent_seconds: float = 0.0, trace_seconds: float = 0.0,
                     measured_in: str | None = None, validation_seconds: float = 0.0,
                     validation_batches: int = 1, final_seconds: float = 0.0) -> RunConfig:
    """Epochs and steps per epoch that fill ``config.train.time_budget``, the whole command's.

    ``step_seconds``: one training step, measured after warm-up;
    ``pass_steps``: steps of about one pass over the training pixels;
    ``spent_seconds``: budget already used (preparing the data, measuring);
    ``trace_seconds``: what the real model's first step will add to tracing
    its training function (the measured model's first step, less a step);
    ``measured_in``: the run that measured ``step_seconds``, when not this one
    (a cross-validation's first fold);
    ``validation_seconds``: one validation pass over all ``validation_batches``;
    ``final_seconds``: what the end of the run will take (final scoring, tuning, save),
    kept out of the epochs.
    (``TimeBudget`` re-plans the epochs from the real pace while training.) Given
    ``steps_per_epoch``, only the epochs are planned; otherwise as many
    epochs as passes fit, between ``MIN_BUDGET_EPOCHS`` and
    ``MAX_BUDGET_EPOCHS``. Validation costs at most ``VALIDATION_SHARE`` of an epoch
    (``validation_steps``). The learning-rate schedule spans the result.
    """
    train = config.train
    budget = train.time_budget
    remaining = max(0.0, budget - spent_seconds - trace_seconds - final_seconds)
    total = max(1, int(remaining // step_seconds))
    epochs = total
    if train.steps_per_epoch is not None:
        steps = min(train.steps_per_epoch, total)
    else:
        epochs = min(MAX_BUDGET_EPOCHS, max(MIN_BUDGET_EPOCHS, total // max(1, pass_steps)))
        steps = max(1, total // epochs)
    spread = epochs  # the epochs the steps were spread over, before validation's share
    epoch_seconds = steps * step_seconds
    validation_steps = train.validation_steps
    batches = max(1, validation_batches)
    if validation_steps is None and validation_seconds > VALIDATION_SHARE * epoch_seconds:
        validation_steps = max(1, int(batches * VALIDATION_SHARE * epoch_seconds
                                      / validation_seconds))
    scored = min(batches, validation_steps or batches)
    validating = validation_seconds * scored / batches
    epochs = max(1, int(remaining // (epoch_seconds + validating)))
    tracing = f" and {trace_seconds:.0f} s to trace the training function" \
        if trace_seconds >= 0.5 else ""
    where = f" in {measured_in}" if measured_in else ""
    reason = (f"time_budget {format_duration(budget)}: {step_seconds:.3g} s a step (measured "
              f"after warm-up{where}) and {validating:.3g} s of validation an epoch; "
              f"{remaining:.0f} s left after {spent_seconds:.0f} s of preparing and measuring"
              f"{tracing}, with {final_seconds:.0f} s kept for the final scoring, tuning and "
              f"save: {epochs} x {steps} = {epochs * steps} steps")
    plan = dict(config.plan or {})
    plan["epochs"] = {"value": epochs, "reason": reason}
    plan["steps_per_epoch"] = {"value": steps, "reason": (
        "as given" if train.steps_per_epoch is not None else
        f"{total} steps over {spread} epochs ({MIN_BUDGET_EPOCHS} to {MAX_BUDGET_EPOCHS}; "
        f"a pass over the training pixels is {pass_steps} steps), before validation's "
        "share")}
    if train.validation_steps is None:
        plan["validation_steps"] = {"value": validation_steps, "reason": (
            f"a validation pass over its {batches} batches takes {validation_seconds:.3g} s "
            f"(measured), an epoch's training {epoch_seconds:.3g} s: "
            + ("all of them after each epoch" if validation_steps is None else
               f"the first {validation_steps} after each epoch (at most "
               f"{VALIDATION_SHARE:.0%} of an epoch); the final scores and the tuning use "
               "all"))}
    plan["validation_seconds"] = {"value": round(validating, 2), "reason": (
        "validation an epoch, as planned (the pacer's estimate after the first epoch, whose "
        "validation also traces the test function)")}
    plan["final_seconds"] = {"value": round(final_seconds, 1), "reason": (
        "kept out of the epochs for what follows training: the best model's scores on every "
        "validation batch, the threshold and post-processing chosen on whole validation "
        "images, and the saves (estimated from the measured validation pass)")}
    return dataclasses.replace(
        config, train=dataclasses.replace(train, epochs=epochs, steps_per_epoch=steps,
                                          validation_steps=validation_steps),
        plan=plan)


def replan_epochs(config: RunConfig, epochs: int, step_seconds: float, after: int,
                  last_steps: int | None = None) -> RunConfig:
    """``config`` with the epochs the time budget's pacer chose after epoch ``after`` from
    the run's own pace (``step_seconds``), the measured plan kept in the reason;
    ``last_steps``: the steps of a shorter last epoch, if the pacer planned one."""
    plan = dict(config.plan or {})
    measured = plan.get("epochs", {}).get("reason", "").split("; re-planned")[0]
    last = f", the last of {last_steps} steps" if last_steps is not None else ""
    plan["epochs"] = {"value": epochs, "reason": (
        f"{measured}; re-planned after epoch {after}: {step_seconds:.3g} s a step in "
        f"training, {epochs} epochs fill the budget{last}")}
    plan.pop("last_epoch_steps", None)
    if last_steps is not None:  # read back by a --resume (``TimeBudget(last_steps=...)``)
        plan["last_epoch_steps"] = {"value": last_steps, "reason": (
            f"the time left after {epochs - 1} whole epochs holds {last_steps} of an epoch's "
            f"{config.train.steps_per_epoch} steps: epoch {epochs} stops after them")}
    return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs),
                               plan=plan)


def plan_rows(plan: dict[str, dict[str, Any]] | None) -> list[tuple[str, str, str]]:
    """``(setting, value, reason)`` rows of a run's plan, for the log and notebooks."""
    return [(name, _show(entry["value"]), entry["reason"]) for name, entry in (plan or {}).items()]


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_values(v) if isinstance(v, list) else _number(v)}"
                         for k, v in value.items())
    return _number(value)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _values(values: list[float]) -> str:
    return "/".join(f"{v:.4g}" for v in values)
