"""The data set fingerprint: what the automatic configuration (``unet_cbam.plan``) reads.

Computed from what verification learnt about every pair (``SampleInfo``):
image sizes, channels, types, intensity statistics over a bounded random
sample of the raw pixels (all pixels and foreground pixels), class pixel
frequencies, connected-component sizes per class and the mask formats.
Saved as ``fingerprint.json`` in every run folder; ``unet-cbam-fingerprint
DIR`` prints it for a data folder without training (``explore.inspect_data``
computes it for the notebooks).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from unet_cbam.data.classes import MaskClasses
from unet_cbam.data.verify import DatasetReport, Sample
from unet_cbam.tables import markdown_table

PERCENTILES = (0.5, 50.0, 99.5)
FINGERPRINT_VERSION = 2
#: A structure's typical width from its pixels' median distance to another label: a bar of
#: width w has distances spread evenly over [0, w/2], so their median is w/4.
WIDTH_PER_MEDIAN_DISTANCE = 4.0


def fingerprint_from_report(report: DatasetReport, class_names: list[str],
                            threshold_reason: str | None = None,
                            classes: MaskClasses | None = None) -> dict[str, Any]:
    """The fingerprint of the pairs that passed verification (JSON-ready).

    ``threshold_reason``: why binary masks are thresholded where they are
    (``resolve_binary_threshold``), recorded with the threshold. ``classes``: what the
    masks were found to encode (``resolve_classes``), recorded with its reason.
    """
    infos = [report.info[s.stem] for s in report.samples if s.stem in report.info]
    if not infos:
        raise ValueError("no verified pairs to fingerprint")
    sizes = np.array([(i.height, i.width) for i in infos], dtype=np.int64)
    channels = sorted({i.channels for i in infos})
    dtypes = sorted({i.dtype for i in infos})
    counts = report.class_pixels
    counted = counts[:-1].sum()
    formats = Counter(_mask_format(s, report.info[s.stem]) for s in report.samples
                      if s.stem in report.info)
    objects = {}
    for label, name in enumerate(class_names):
        if label == 0:
            continue
        areas = [i.object_areas[label] for i in infos if label in i.object_areas]
        areas = np.concatenate(areas) if areas else np.zeros(0, np.int64)
        objects[name] = {
            "count": int(len(areas)),
            "per_image": round(float(len(areas) / len(infos)), 3),
            "median_area": float(np.median(areas)) if len(areas) else None,
            "p5_area": float(np.percentile(areas, 5)) if len(areas) else None,
        }
    widths = {}
    for label, name in enumerate(class_names):
        distances = [i.label_distances[label] for i in infos if label in i.label_distances]
        if distances:
            widths[name] = round(WIDTH_PER_MEDIAN_DISTANCE
                                 * float(np.median(np.concatenate(distances))), 2)
    return {
        "version": FINGERPRINT_VERSION,
        "pairs": len(infos),
        "image_size": {
            "min": sizes.min(axis=0).tolist(),
            "median": np.median(sizes, axis=0).tolist(),
            "max": sizes.max(axis=0).tolist(),
        },
        "channels": channels,
        "dtype": dtypes,
        "bit_depth": max(i.bit_depth for i in infos),
        "intensity": {
            "all": _intensity([i.pixels for i in infos], channels),
            "foreground": _intensity([i.foreground_pixels for i in infos], channels),
        },
        "class_frequency": {name: (float(counts[label] / counted) if counted else 0.0)
                            for label, name in enumerate(class_names)},
        "ignored_pixels": int(counts[-1]),
        "objects": objects,
        # Typical width (pixels) of each label's structures, where it borders another label.
        "structure_width": widths,
        "mask_formats": dict(sorted(formats.items())),
        "mask_encoding": report.codec.encoding if report.codec else None,
        **({"binary_threshold": {"value": report.codec.threshold,
                                 "reason": threshold_reason or "given"}}
           if report.codec is not None and report.codec.encoding == "binary" else {}),
        **({"mask_classes": {
            "encoding": classes.encoding, "num_classes": classes.num_classes,
            "reason": classes.reason, "colors": classes.colors,
            "ignore_value": classes.ignore_value,
            "edge_colors": [{"color": list(color), "pixels": pixels, "files": files}
                            for color, (pixels, files) in classes.edge_colors.items()]}}
           if classes is not None else {}),
    }


def _mask_format(sample: Sample, info) -> str:
    kind = "palette" if info.mask_is_palette else f"{info.mask_bit_depth}-bit"
    return f"{sample.mask_path.suffix.lower().lstrip('.')} {kind}"


def _intensity(samples: list[np.ndarray | None], channels: list[int]) -> dict[str, Any]:
    """Percentiles, mean and std per channel (pooled when images differ in channels)."""
    samples = [s for s in samples if s is not None and len(s)]
    if not samples:
        return {"pixels": 0}
    if len(channels) > 1:  # mixed gray and colour: one pooled channel
        samples = [s.reshape(-1, 1) for s in samples]
    values = np.concatenate([s.astype(np.float64) for s in samples])
    stats: dict[str, Any] = {"pixels": int(len(values))}
    for q, row in zip(PERCENTILES, np.percentile(values, PERCENTILES, axis=0), strict=True):
        stats[f"p{q:g}"] = [float(v) for v in row]
    stats["min"] = [float(v) for v in values.min(axis=0)]
    stats["max"] = [float(v) for v in values.max(axis=0)]
    stats["mean"] = [float(v) for v in values.mean(axis=0)]
    stats["std"] = [float(v) for v in values.std(axis=0)]
    return stats


def fingerprint_rows(fingerprint: dict[str, Any]) -> list[tuple[str, str]]:
    """``(property, value)`` rows for a table."""
    size = fingerprint["image_size"]

    def hw(value):
        return "x".join(f"{v:g}" for v in value[::-1])  # width x height

    rows = [
        ("pairs", str(fingerprint["pairs"])),
        ("image size (w x h): min / median / max",
         f"{hw(size['min'])} / {hw(size['median'])} / {hw(size['max'])}"),
        ("channels", ", ".join(map(str, fingerprint["channels"]))),
        ("pixel type", ", ".join(fingerprint["dtype"])),
    ]
    for where in ("all", "foreground"):
        stats = fingerprint["intensity"][where]
        if not stats.get("pixels"):
            rows.append((f"intensity ({where} pixels)", "no pixels"))
            continue
        rows.append((f"intensity, {where} pixels: p0.5 / p50 / p99.5",
                     " / ".join(_values(stats[f"p{q:g}"]) for q in PERCENTILES)))
        rows.append((f"intensity, {where} pixels: mean / std",
                     f"{_values(stats['mean'])} / {_values(stats['std'])}"))
    for name, fraction in fingerprint["class_frequency"].items():
        rows.append((f"pixels of class {name}", f"{fraction:.2%}"))
    for name, objects in fingerprint["objects"].items():
        if objects["count"]:
            rows.append((f"objects of {name}: count (per image), median / p5 area",
                         f"{objects['count']} ({objects['per_image']:g}), "
                         f"{objects['median_area']:g} / {objects['p5_area']:g} px"))
    for name, width in fingerprint.get("structure_width", {}).items():
        rows.append((f"typical width of {name} (4 x median distance to another class)",
                     f"{width:g} px"))
    rows.append(("mask files", ", ".join(f"{k}: {v}" for k, v in
                                         fingerprint["mask_formats"].items())))
    if "mask_classes" in fingerprint:
        found = fingerprint["mask_classes"]
        rows.append(("classes", f"{found['num_classes']} ({found['reason']})"))
        for edge in found.get("edge_colors") or []:
            rows.append((f"edge colour {tuple(edge['color'])}",
                         f"{edge['pixels']} px, only on edges between classes (in "
                         f"{', '.join(edge['files'])}): left out"))
    if "binary_threshold" in fingerprint:
        threshold = fingerprint["binary_threshold"]
        rows.append(("binary threshold", f"{threshold['value']} ({threshold['reason']})"))
    return rows


def _values(values: list[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def format_fingerprint(fingerprint: dict[str, Any]) -> str:
    """The fingerprint as a Markdown table."""
    return markdown_table(fingerprint_rows(fingerprint), ["property", "value"])

