"""Data preparation for training: pair, verify, fingerprint, plan and split a data folder.

``prepare_data`` is the one path from a config's data section to the pixels the
pipelines read; ``unet_cbam.explore.inspect_data`` and the benchmarks use it too.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from unet_cbam.config import RunConfig
from unet_cbam.data.dataset import PairSource, kfold_split, split_samples
from unet_cbam.data.io import BITDEPTH, MaskCodec
from unet_cbam.data.verify import (
    DataError,
    DatasetReport,
    verify_data,
)
from unet_cbam.fingerprint import fingerprint_from_report
from unet_cbam.plan import plan_run
from unet_cbam.run import class_names
from unet_cbam.semisupervised import ImageSource, verify_unlabeled

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Verified data, ready for the pipelines."""

    config: RunConfig           # with the mask encoding and the plan resolved
    codec: MaskCodec
    train: PairSource
    val: PairSource
    report: DatasetReport       # of every verified pair, training and validation
    fingerprint: dict
    unlabeled: ImageSource | None = None  # images without masks (data.unlabeled)

    @property
    def class_names(self) -> list[str]:
        return class_names(self.config.data, self.codec)


def prepare_data(config: RunConfig, split: dict | None = None, progress: bool = True
                 ) -> PreparedData:
    """Pair, verify, fingerprint, plan and split; raise ``DataError`` listing every problem.

    ``split`` (from a run's split.json) pins which stems train and validate.
    The returned config has every automatic setting decided (``plan_run``),
    from the fingerprint of all pairs (training and validation: never a test
    set, which train.py does not see).
    """
    verified = verify_data(config.data, config.model, progress)
    report, codec, data = verified.report, verified.codec, verified.data
    samples, val_samples, images_dir = (verified.samples, verified.val_samples,
                                        verified.images_dir)
    report.raise_for_problems()

    if split is not None:
        by_stem = {s.stem: s for s in samples + val_samples}
        missing = [stem for stem in split["train"] + split["val"] if stem not in by_stem]
        if missing:
            raise DataError([f"{images_dir}: pair {stem!r} of the saved split is gone"
                             for stem in missing])
        train = [by_stem[stem] for stem in split["train"]]
        val = [by_stem[stem] for stem in split["val"]]
    elif config.train.folds is not None:
        if val_samples:
            raise DataError([f"{data.val_data}: val_data cannot be combined with folds (each "
                             "fold validates on its own part of the data)"])
        try:
            train, val = kfold_split(samples, config.train.folds, config.train.fold or 0,
                                     config.train.seed)
        except ValueError as error:
            raise DataError([f"{images_dir}: {error}"]) from None
    elif val_samples:
        train, val = samples, val_samples
    else:
        train, val = split_samples(samples, data.val_fraction, config.train.seed)
    if not val:
        raise DataError([f"{images_dir}: no validation pairs; training needs them to pick the "
                         "best model (set val_fraction > 0 with at least 2 pairs, or val_data)"])

    resolved = dataclasses.replace(
        data, mask_encoding=codec.encoding,
        mask_values=list(report.binary_values()) if codec.encoding == "binary" else None,
        palette=[list(c) for c in codec.palette] if codec.palette else None)
    codec = dataclasses.replace(codec, values=tuple(resolved.mask_values or codec.values))
    report.codec = codec
    fingerprint = fingerprint_from_report(report, class_names(resolved, codec),
                                          verified.threshold_reason, verified.classes)
    unlabeled = None  # (files, sizes)
    if data.unlabeled is not None:
        *unlabeled, fingerprint["unlabeled"] = verify_unlabeled(
            data.unlabeled, channels=config.model.input_channels, fingerprint=fingerprint,
            labelled_stems={s.stem for s in samples + val_samples}, max_pixels=data.max_pixels,
            progress=progress)
    model = dataclasses.replace(config.model, num_classes=verified.num_classes)
    config = plan_run(dataclasses.replace(config, model=model, data=resolved), fingerprint)
    normalization = config.data.normalization or BITDEPTH
    channels = config.model.input_channels
    sources = [PairSource.from_report(part, report, channels, normalization,
                                      config.data.scale or 1.0) for part in (train, val)]
    report.cache = None  # the sources hold the preprocessed pixels now
    if unlabeled is not None:
        unlabeled = ImageSource(*unlabeled, channels, normalization, config.data.scale or 1.0)
    return PreparedData(config, codec, *sources, report, fingerprint, unlabeled)
