"""Batch prediction: a run's model over a folder of images of any size.

One mask per input, in the training masks' encoding; optional probability
maps, overlays and attention figures; a summary CSV. A bad input is reported
and skipped; existing outputs are kept (resume) unless ``overwrite``; every
file is written under a temporary name and renamed; inputs are never
overwritten: an output folder that holds any input is refused. ``shard =
(i, n)`` takes every n-th file of the sorted list, so n machines can share
one folder. Outputs mirror the input tree: ``a/x.png``
and ``b/x.png`` under the input folder become ``OUTPUT/a/x.png`` and
``OUTPUT/b/x.png``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unet_cbam.attention import attention_layers, attention_maps
from unet_cbam.config import InferenceConfig
from unet_cbam.data.io import (
    IGNORE_LABEL,
    ImageReadError,
    is_image_file,
    read_mask,
    read_raw,
    resize_image,
    scaled_size,
    to_float,
    write_image,
    write_mask,
)
from unet_cbam.data.verify import Sample
from unet_cbam.evaluate import Evaluation, evaluate_instances, evaluate_pairs
from unet_cbam.files import atomic_write, one_line, remove_stale_temporaries
from unet_cbam.inference import (
    ensemble_predictor,
    keras_predictor,
    onnx_predictor,
    openvino_predictor,
    predictive_entropy,
    probabilities_to_labels,
    resampled_predict,
    round_up,
    sliding_window_rows,
    with_tta,
)
from unet_cbam.inputs import check_output_folder
from unet_cbam.instances import label_instances, min_distance_for
from unet_cbam.loading import LoadedRun, in_precision
from unet_cbam.postprocess import postprocess
from unet_cbam.precision import choose_precision
from unet_cbam.progress import progress as progress_of
from unet_cbam.quantize import int8_model
from unet_cbam.run import RunFolder
from unet_cbam.runtime import (
    INT8_CANDIDATE,
    OPENVINO_PRECISIONS,
    cache_file,
    cache_key,
    choose_runtime,
    fastest,
    int8_candidate,
    read_choice,
    runtime_candidates,
    time_runtimes,
    to_onnx,
    to_openvino,
    write_choice,
)
from unet_cbam.summary import ItemResult, SummaryWriter
from unet_cbam.visualize import add_legend, class_colors, overlay, plot_attention

logger = logging.getLogger(__name__)


@dataclass
class OutputOptions:
    """Which outputs beside the masks a batch writes, and whether it replaces existing ones."""
    save_probabilities: bool = False
    probability_format: str = "png"   # png (16-bit) or npy (float16)
    save_overlays: bool = False
    save_attention: bool = False
    save_uncertainty: bool = False    # predictive entropy as a 16-bit PNG
    instances: str | None = None      # binary models: components or watershed
    overwrite: bool = False


@dataclass
class BatchResult:
    """A batch's items (ok, skipped or failed), its summary CSV and, with truth, its scores."""
    items: list[ItemResult] = field(default_factory=list)
    summary_csv: Path | None = None  # None when it could not be written
    evaluation: Evaluation | None = None

    @property
    def failed(self) -> list[ItemResult]:
        return [item for item in self.items if item.status == "failed"]


class BatchPredictor:
    """Runs a loaded model over files, writing every output atomically."""

    def __init__(self, run: LoadedRun, inference: InferenceConfig,
                 output_dir: str | Path | None = None, options: OutputOptions | None = None):
        """``output_dir`` may be None to use only ``predict_image`` / ``attention``."""
        self.run = run
        self.inference = inference
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.options = options or OutputOptions()
        if self.options.probability_format not in ("png", "npy"):
            raise ValueError(f"probability_format must be png or npy, "
                             f"got {self.options.probability_format!r}")
        if self.options.save_attention and not attention_layers(run.model):
            raise ValueError(f"{run.path}: the model has no attention layers to save")
        if self.options.instances not in (None, "components", "watershed"):
            raise ValueError(f"instances must be components or watershed, "
                             f"got {self.options.instances!r}")
        if self.options.instances and run.codec.num_labels != 2:
            raise ValueError(f"{run.path}: --instances needs a binary model; this one has "
                             f"{run.codec.num_labels} classes")
        folds = RunFolder(run.path).folds()
        #: Watershed seed spacing, from the training data's object sizes.
        self.min_distance = min_distance_for((folds[0] if folds else RunFolder(run.path))
                                             .read_fingerprint())
        #: The threshold applied: given, else tuned on validation, else 0.5.
        self.threshold = inference.resolve_threshold(run.config.inference)
        self.postprocessing = inference.postprocessing(run.config.inference)
        #: The precision of the forward passes, and the models in it.
        if inference.precision == "int8":
            if inference.runtime == "onnxruntime":
                raise ValueError("precision int8 runs on runtime openvino (or keras, the "
                                 "default, which hands it to openvino), not onnxruntime")
            self.precision, why = "int8", "asked for"
        elif inference.runtime == "onnxruntime" and inference.precision == "auto":
            self.precision, why = "float32", "runtime onnxruntime runs float32 models"
        else:
            self.precision, why = choose_precision(inference.precision)
            if (inference.runtime == "openvino" and inference.precision == "auto"
                    and self.precision not in OPENVINO_PRECISIONS):
                self.precision, why = "float32", (f"runtime openvino runs on the CPU, in "
                                                  f"{' or '.join(OPENVINO_PRECISIONS)}")
        logger.debug("precision %s (%s)", self.precision, why)
        #: What runs the model (keras, onnxruntime or openvino).
        self._converted: list[tempfile.TemporaryDirectory] = []
        #: Per member, whether it runs its checked INT8 model (None: no INT8 asked or chosen).
        self.int8: list[bool] | None = None
        if self.precision == "int8":
            self.runtime, why = "openvino", "precision int8: Keras runs no INT8 models"
            pairs = self._int8_predictors()
        else:
            self.runtime, why = choose_runtime(inference.runtime, self.precision)
            if self.runtime == "auto":
                self.runtime, why, pairs = self._fastest_runtime()
            else:
                pairs = self._predictors(self.runtime, run.members)
        #: The Keras models behind the predictors: in the precision, or the float32 ones
        #: that were converted.
        self.models = [model for model, _ in pairs]
        predictors = [predictor for _, predictor in pairs]
        logger.info("runtime %s, %s (%s)", self.runtime, self.precision, why)
        #: (scale, predictor, members): the members trained at one resolution, averaged
        #: tile by tile; groups at different resolutions are averaged at the image's size.
        self.groups = []
        for scale in sorted(set(run.scales), reverse=True):
            chosen = [p for p, s in zip(predictors, run.scales, strict=True) if s == scale]
            predictor = ensemble_predictor(chosen)
            self.groups.append((scale, with_tta(predictor) if inference.tta else predictor,
                                len(chosen)))
        self.predictor = self.groups[0][1]
        #: Whether every member sees images at their own size (then tiles stream).
        self.native = len(self.groups) == 1 and self.groups[0][0] == 1.0
        self.divisor = run.config.model.divisor

    def _predictors(self, runtime: str, members: list) -> list[tuple]:
        """(Keras model, predictor) per model of ``members`` on ``runtime`` in
        ``self.precision``."""
        precision = self.precision
        if runtime == "keras":
            models = [in_precision(model, self.run.config.model, precision) for model in members]
            return [(model, keras_predictor(model)) for model in models]
        if runtime == "onnxruntime" and precision != "float32":
            raise ValueError(f"runtime onnxruntime runs float32 models; precision "
                             f"{precision} needs runtime keras")
        if runtime == "openvino" and precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"runtime openvino runs {' or '.join(OPENVINO_PRECISIONS)}; "
                             f"precision {precision} needs runtime keras")
        folder = tempfile.TemporaryDirectory(prefix=f"unet_cbam-{runtime}-")
        self._converted.append(folder)
        pairs = []
        for index, model in enumerate(self._float32(members)):
            if runtime == "onnxruntime":
                predictor = onnx_predictor(to_onnx(model, Path(folder.name) / f"m{index}.onnx"))
            else:
                (Path(folder.name) / str(index)).mkdir()
                predictor = openvino_predictor(to_openvino(model, Path(folder.name) / str(index)),
                                               OPENVINO_PRECISIONS[precision])
            pairs.append((model, predictor))
        return pairs

    def _fastest_runtime(self) -> tuple[str, str, list[tuple]]:
        """(runtime, reason, (model, predictor) per member) for --runtime auto: from the
        cache, else timed (``unet_cbam.runtime``) on a batch of tiles of this prediction's
        size, the first member standing for all. With the precision left to auto, the
        run's INT8 model is a candidate where it passed its check; if it wins,
        ``self.precision`` becomes int8."""
        candidates, left_out = runtime_candidates(self.precision, gpus=0)
        int8, why_not = int8_candidate(self.inference.precision, candidates)
        if int8:
            candidates = [*candidates, INT8_CANDIDATE]
        elif "openvino" in candidates:
            left_out.append(why_not)
        side = round_up(self.inference.tile_size, self.run.config.model.divisor)
        shape = (self.inference.batch_size, side, side, self.run.channels)
        files = [folder.model_path for folder in
                 (RunFolder(self.run.path).folds() or [RunFolder(self.run.path)])]
        key = cache_key(files, shape, self.precision, candidates) if all(
            f.is_file() for f in files) else None
        cached = read_choice(key) if key else None
        if cached and cached.get("runtime") in candidates:
            reason = f"{cached['reason']}; measured before ({cache_file()})"
            return self._chosen_before(cached["runtime"], reason)
        if len(candidates) == 1:
            return "keras", "the only runtime here (" + "; ".join(left_out) + ")", \
                self._predictors("keras", self.run.members)
        first = {name: self._predictors(name, self.run.members[:1])[0]
                 for name in candidates if name not in (INT8_CANDIDATE, "openvino")}
        float32 = None
        if int8 or self.precision != "float32":
            [float32] = self._float32(self.run.members[:1])
        if int8:  # the first member's OpenVINO form serves both candidates: converted once
            folder = tempfile.TemporaryDirectory(prefix="unet_cbam-openvino-")
            self._converted.append(folder)
            converted = to_openvino(float32, Path(folder.name))
            first["openvino"] = (float32, openvino_predictor(
                converted, OPENVINO_PRECISIONS[self.precision]))
            outcome = self._int8_outcome(0, float32, converted)
            if outcome.model is None:
                left_out.append(f"int8: {outcome.reason}")
            else:
                first[INT8_CANDIDATE] = (float32, openvino_predictor(outcome.model, "f32"))
        elif "openvino" in candidates:
            first["openvino"] = self._predictors("openvino", self.run.members[:1])[0]
        tiles = np.random.default_rng(0).random(shape, dtype=np.float32)
        # Every candidate is held to Keras float32 (``time_runtimes``), not to Keras in
        # this precision: two bfloat16 runtimes round differently.
        reference = (None if self.precision == "float32"
                     else keras_predictor(float32)(tiles))
        results = time_runtimes({name: predictor for name, (_, predictor) in first.items()},
                                tiles, self.precision, checked=frozenset({INT8_CANDIDATE}),
                                reference=reference)
        runtime, reason = fastest(results)
        reason += f" of {'x'.join(map(str, shape))}"
        if left_out:
            reason += " (" + "; ".join(left_out) + ")"
        if key:
            write_choice(key, {"runtime": runtime, "reason": reason, "results": results})
        if runtime == INT8_CANDIDATE:
            self.precision, self.int8 = "int8", [True]
            return "openvino", reason, [first[runtime], *self._int8_predictors(start=1)]
        return runtime, reason, [first[runtime], *self._predictors(runtime,
                                                                   self.run.members[1:])]

    def _chosen_before(self, runtime: str, reason: str) -> tuple[str, str, list[tuple]]:
        """(runtime, reason, pairs) of a cached choice of --runtime auto."""
        if runtime == INT8_CANDIDATE:
            self.precision = "int8"
            return "openvino", reason, self._int8_predictors()
        return runtime, reason, self._predictors(runtime, self.run.members)

    def _int8_outcome(self, index: int, model, converted=None):
        """``quantize.int8_model`` for member ``index`` (``model``: it in float32;
        ``converted``: its OpenVINO form, where made already), its reason logged."""
        folders = RunFolder(self.run.path).folds() or [RunFolder(self.run.path)]
        outcome = int8_model(folders[index].path, model, self.run.scales[index],
                             self.inference.tile_size, self.inference.overlap,
                             self.inference.batch_size, self.threshold, converted)
        logger.info("%s: %s", folders[index].path.name, outcome.reason)
        return outcome

    def _int8_predictors(self, start: int = 0) -> list[tuple]:
        """(float32 Keras model, predictor) per member from ``start``: its checked INT8
        model (``unet_cbam.quantize``), or its float32 one where INT8 failed the check;
        ``self.int8`` says which."""
        converted = tempfile.TemporaryDirectory(prefix="unet_cbam-openvino-")
        self._converted.append(converted)
        if start == 0:
            self.int8 = []
        predictors = []
        for index, model in enumerate(self._float32(self.run.members[start:]), start):
            outcome = self._int8_outcome(index, model)
            chosen = outcome.model
            if chosen is None:
                (Path(converted.name) / str(index)).mkdir()
                chosen = to_openvino(model, Path(converted.name) / str(index))
            self.int8.append(outcome.model is not None)
            predictors.append((model, openvino_predictor(chosen, "f32")))
        return predictors

    def _float32(self, members: list) -> list:
        """``members`` in float32, for a conversion (OpenVINO applies its own precision)."""
        return [in_precision(model, self.run.config.model, "float32") for model in members]

    # -- one image ---------------------------------------------------------

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` preprocessed image -> ``(H, W, K)`` probabilities (at the image's
        size, whatever resolution the members were trained at)."""
        total = None
        for scale, predictor, members in self.groups:
            probabilities = resampled_predict(
                image, predictor, scale=scale, tile_size=self.inference.tile_size,
                overlap=self.inference.overlap, batch_size=self.inference.batch_size,
                divisor=self.divisor)
            if len(self.groups) == 1:
                return probabilities
            total = probabilities * members if total is None else total + probabilities * members
        return total / sum(members for _, _, members in self.groups)

    def predict_raw(self, raw: np.ndarray, path: str | Path = "",
                    keep_probabilities: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A decoded image as stored -> (labels ``(H, W)``, probabilities or None).

        Streams: each tile is preprocessed on its own and each finished band
        of rows is thresholded at once, so memory beyond the decoded image is
        the labels (1 byte a pixel), one tile-high band and, only when
        ``keep_probabilities``, the ``(H, W, K)`` float32 probabilities.
        Labels and probabilities equal ``predict_image(preprocess(raw))``; the labels
        are then post-processed as the run's ``inference`` section says (whole image),
        unless ``InferenceConfig.postprocess`` is off.
        """
        if raw.dtype.kind == "f" and self.run.normalization.mode == "bitdepth":
            to_float(raw, path)  # the range check applies to the whole image
        image = raw if raw.ndim == 3 else raw[..., None]
        run = self.run
        dtype = np.uint8 if self.run.codec.num_labels <= 256 else np.uint16
        if not self.native:  # resampled as in training: the whole image at once
            probabilities = self.predict_image(run.preprocess(raw, path))
            labels = probabilities_to_labels(probabilities, self.threshold).astype(dtype)
            if self.postprocessing is not None:
                labels = postprocess(labels, self.postprocessing, self.run.class_names)
            return labels, probabilities if keep_probabilities else None
        labels = np.empty(raw.shape[:2], dtype)
        probabilities = None
        for top, rows in sliding_window_rows(
                image, self.predictor, tile_size=self.inference.tile_size,
                overlap=self.inference.overlap, batch_size=self.inference.batch_size,
                divisor=self.divisor, convert=lambda tile: run.preprocess(tile, path)):
            labels[top:top + len(rows)] = probabilities_to_labels(rows, self.threshold)
            if keep_probabilities:
                if probabilities is None:
                    probabilities = np.empty(raw.shape[:2] + rows.shape[2:], np.float32)
                probabilities[top:top + len(rows)] = rows
        if self.postprocessing is not None:  # connected components need the whole image
            labels = postprocess(labels, self.postprocessing, self.run.class_names)
        return labels, probabilities

    def outputs(self, source: Path, root: Path | None = None) -> dict[str, Path]:
        """Output paths of ``source``: its path below ``root``, mirrored."""
        relative = Path(source.name)
        if root is not None:
            try:
                relative = source.resolve().relative_to(root.resolve())
            except ValueError:
                pass
        stem = relative.parent / relative.stem
        paths = {"mask": self.output_dir / f"{stem}.png"}
        if self.options.save_probabilities:
            extension = "npy" if self.options.probability_format == "npy" else "png"
            paths["probabilities"] = self.output_dir / "probabilities" / f"{stem}.{extension}"
        if self.options.save_overlays:
            paths["overlay"] = self.output_dir / "overlays" / f"{stem}.png"
        if self.options.save_attention:
            paths["attention"] = self.output_dir / "attention" / f"{stem}.png"
        if self.options.save_uncertainty:
            paths["uncertainty"] = self.output_dir / "uncertainty" / f"{stem}.png"
        if self.options.instances:
            paths["instances"] = self.output_dir / "instances" / f"{stem}.png"
        return paths

    def _write_outputs(self, raw, probabilities, labels, paths, attention=None) -> None:
        """Extras first, the mask last: an existing mask means a finished item."""
        if "probabilities" in paths:
            self._write_probabilities(probabilities, paths["probabilities"])
        if "uncertainty" in paths:
            entropy = predictive_entropy(probabilities)
            write_image(paths["uncertainty"], np.round(entropy * 65535).astype(np.uint16))
        if "instances" in paths:
            write_image(paths["instances"], label_instances(
                labels == 1, split=self.options.instances == "watershed",
                min_distance=self.min_distance))
        if "overlay" in paths:
            colors = class_colors(self.run.codec.num_labels)
            picture = overlay(self.run.preprocess(raw, standardize=False), labels, colors)
            if self.run.codec.num_labels > 2:
                picture = add_legend(picture, self.run.class_names, colors)
            write_image(paths["overlay"], picture)
        if attention is not None:
            shown, maps = attention
            figure = plot_attention(shown, maps, title=paths["attention"].stem)
            with atomic_write(paths["attention"]) as temporary:
                figure.savefig(temporary, dpi=100, format="png")
        write_mask(paths["mask"], labels, self.run.codec)

    def _write_probabilities(self, probabilities: np.ndarray, path: Path) -> None:
        if path.suffix == ".npy":
            with atomic_write(path) as temporary, open(temporary, "wb") as handle:
                np.save(handle, probabilities.astype(np.float16))
            return
        scaled = np.round(np.clip(probabilities, 0, 1) * 65535).astype(np.uint16)
        if scaled.shape[-1] == 1:
            write_image(path, scaled[..., 0])
        else:  # one 16-bit PNG per class
            for index in range(scaled.shape[-1]):
                write_image(path.with_name(f"{path.stem}_class{index}.png"), scaled[..., index])

    def attention_view(self, image: np.ndarray) -> np.ndarray:
        """What ``attention`` looks at: the whole image, or its central tile when
        the image is much larger than a tile (works on raw or preprocessed images)."""
        height, width = image.shape[:2]
        tile = self.inference.tile_size
        if height * width > 4 * tile * tile:
            top, left = max(0, (height - tile) // 2), max(0, (width - tile) // 2)
            image = image[top:top + tile, left:left + tile]
        return image

    def attention(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """(image shown, one image's attention maps): ``attention_view(image)``
        padded to the divisor."""
        image = self.attention_view(image)
        if self.run.scales[0] != 1.0:  # the model's own resolution
            image = resize_image(image, *scaled_size(*image.shape[:2], self.run.scales[0]))
            image = image.reshape(image.shape[:2] + (-1,))
        height, width = image.shape[:2]
        padded_h, padded_w = round_up(height, self.divisor), round_up(width, self.divisor)
        padded = np.pad(image, ((0, padded_h - height), (0, padded_w - width), (0, 0)),
                        mode="symmetric")
        maps = attention_maps(self.run.model, padded[None])
        cropped = {}
        for level, gates in maps.items():
            stride = 2**level
            cropped[level] = {
                key: (value[0, :-(-height // stride), :-(-width // stride)]
                      if key == "spatial" else value[0])
                for key, value in gates.items()}
        return image, cropped

    # -- a batch -----------------------------------------------------------

    def run_files(self, files: list[Path], progress: bool = True,
                  summary_name: str = "summary.csv", root: Path | None = None) -> BatchResult:
        """Predict every file; report failures; never stop for one bad input.

        Outputs mirror the files' paths below ``root`` (default: their
        common folder). The summary CSV gets a row as each item finishes
        (a killed run leaves one) and is rewritten sorted at the end.
        """
        if self.output_dir is None:
            raise ValueError("BatchPredictor needs an output_dir to write files")
        check_output_folder(self.output_dir, files)
        remove_stale_temporaries(self.output_dir, depth=None)
        if root is None and files:
            root = Path(os.path.commonpath([f.parent.resolve() for f in files]))
        result = BatchResult(summary_csv=self.output_dir / summary_name)
        summary = SummaryWriter(result.summary_csv)
        claimed: dict[Path, Path] = {}
        todo: list[tuple[Path, dict[str, Path]]] = []
        for source in files:
            paths = self.outputs(source, root)
            mask = paths["mask"]
            if mask in claimed:
                item = ItemResult(source, "failed", error=f"output {mask.name} is already "
                                  f"written for {claimed[mask].name} (same file stem)")
            elif not self.options.overwrite and all(p.exists() for p in paths.values()):
                item = self._skipped(source, mask)
            else:
                claimed[mask] = source
                todo.append((source, paths))
                continue
            claimed[mask] = source
            result.items.append(item)
            summary.add(item)

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="read") as readers, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as writer:
            def read(source: Path) -> np.ndarray:
                return read_raw(source, self.inference.max_pixels)

            def write(item: ItemResult, *outputs) -> None:
                try:
                    self._write_outputs(*outputs)
                except Exception as error:
                    logger.error("%s: cannot write outputs: %s", item.file,
                                 one_line(error, item.file))
                    item.status, item.mask = "failed", None
                    item.error = f"writing: {one_line(error, item.file)}"
                summary.add(item)

            # Read one image ahead and write in the background: the model never waits on I/O.
            pending: Future | None = readers.submit(read, todo[0][0]) if todo else None
            writes: list[Future] = []
            for index, (source, paths) in enumerate(progress_of(
                    todo, desc="predicting", unit="image", enabled=progress)):
                current = pending
                pending = readers.submit(read, todo[index + 1][0]) if index + 1 < len(todo) \
                    else None
                started = time.perf_counter()
                try:
                    image = current.result()  # as decoded: converted tile by tile
                    labels, probabilities = self.predict_raw(
                        image, source,
                        keep_probabilities="probabilities" in paths or "uncertainty" in paths)
                    attention = self.attention(self.run.preprocess(
                        self.attention_view(image), source)) if "attention" in paths else None
                except Exception as error:  # a bad item must not stop the batch
                    message = one_line(error, source)
                    logger.error("%s: %s", source, message)
                    item = ItemResult(source, "failed", error=message)
                    result.items.append(item)
                    summary.add(item)
                    continue
                item = ItemResult(source, "ok", mask=paths["mask"], height=image.shape[0],
                                  width=image.shape[1],
                                  foreground_fraction=float((labels > 0).mean()),
                                  seconds=time.perf_counter() - started)
                result.items.append(item)
                writes.append(writer.submit(write, item, image, probabilities, labels, paths,
                                            attention))
            for future in writes:
                future.result()
        result.items.sort(key=lambda item: str(item.file))
        summary.rewrite(result.items)
        if summary.broken:
            result.summary_csv = None
        return result

    def _skipped(self, source: Path, mask: Path) -> ItemResult:
        """The row of an item done earlier, with its mask's size and foreground."""
        item = ItemResult(source, "skipped", mask=mask)
        try:
            labels = read_mask(mask, self.run.codec)
            item.height, item.width = labels.shape
            item.foreground_fraction = float(((labels > 0) & (labels != IGNORE_LABEL)).mean())
        except (ImageReadError, OSError) as error:
            logger.warning("%s: existing mask not readable (%s); --overwrite predicts it again",
                           mask, one_line(error, mask))
        return item

    def evaluate_instances(self, result: BatchResult, truth_dir: str | Path) -> dict:
        """Object-level precision, recall and F1 (IoU > 0.5) of this batch's instances
        against the true masks in ``truth_dir`` (``evaluate.evaluate_instances``)."""
        truths = {p.stem: p for p in Path(truth_dir).iterdir()
                  if p.is_file() and is_image_file(p)}
        pairs = []
        for item in result.items:
            if item.status in ("ok", "skipped") and item.file.stem in truths and item.mask:
                instances = (self.output_dir / "instances"
                             / item.mask.relative_to(self.output_dir))
                if instances.is_file():
                    pairs.append(Sample(item.file.stem, instances, truths[item.file.stem]))
        return evaluate_instances(pairs)

    def evaluate(self, result: BatchResult, truth_dir: str | Path) -> Evaluation:
        """Score this batch's masks (new and skipped) against ``truth_dir``."""
        truth_dir = Path(truth_dir)
        truths = {p.stem: p for p in truth_dir.iterdir() if p.is_file() and is_image_file(p)}
        done = [item for item in result.items if item.status in ("ok", "skipped")]
        pairs = [Sample(item.file.stem, item.mask, truths[item.file.stem])
                 for item in done if item.file.stem in truths]
        evaluation = evaluate_pairs(pairs, self.run.codec, self.run.class_names)
        evaluation.missing_truths = sorted(item.file.stem for item in done
                                           if item.file.stem not in truths)
        return evaluation


