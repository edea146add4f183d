"""The inputs of a prediction: image files of a folder, a file or a glob, and the
output folder's checks (it never holds an input, and it can be written)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from unet_cbam.data.io import is_image_file

logger = logging.getLogger(__name__)


def list_inputs(spec: str | Path, output_dir: Path | None = None) -> list[Path]:
    """Image files of a folder (and its subfolders), a single file, or a glob, sorted.

    Symlinked folders are never descended into (``**`` included), so a link
    loop cannot multiply the inputs. When the output folder lies inside the
    input folder, nothing under it is an input.
    """
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        return sorted(_walk_images(path, output_dir))
    if path.is_file():
        return [path]
    if not _is_pattern(spec):
        raise FileNotFoundError(f"{spec}: no such file or folder")
    root = input_root(spec)
    pattern = str(path.relative_to(root)) if path.is_absolute() or root != Path(".") \
        else spec
    # An output folder below the pattern's root is not read back; the root itself as
    # output is refused later (check_output_folder), so its files stay inputs here.
    excluded = None
    if output_dir is not None and root.resolve() in output_dir.resolve().parents:
        excluded = output_dir.resolve()
    # pathlib's "**" does not follow symlinked folders (glob.glob's does, into loops).
    files = [p for p in root.glob(pattern) if p.is_file() and is_image_file(p)
             and (excluded is None or excluded not in p.resolve().parents)]
    return sorted(files)


def input_root(spec: str | Path) -> Path:
    """The folder that outputs mirror: the folder itself, a file's folder, or the
    part of a glob before its first wildcard."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    parts = []
    for part in path.parts:
        if _is_pattern(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _walk_images(folder: Path, output_dir: Path | None) -> list[Path]:
    excluded = output_dir.resolve() if output_dir is not None else None
    files = []
    for directory, subfolders, names in os.walk(folder):  # does not follow symlinked folders
        here = Path(directory)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")
                               and (excluded is None or (here / name).resolve() != excluded))
        files += [here / name for name in names
                  if is_image_file(here / name) and (here / name).is_file()]
    return files


def check_output_folder(output_dir: Path, files: list[Path]) -> None:
    """Refuse an output folder that holds any input, or that cannot be written.

    Writing next to the inputs is where inputs get dropped, skipped or
    replaced (a genuine ``b_mask.png``, masks of masks on a second run); the
    one safe rule is that outputs and inputs never share a folder tree.
    """
    resolved = output_dir.resolve()
    inside = [f for f in files if resolved == f.resolve().parent
              or resolved in f.resolve().parents]
    if inside:
        raise ValueError(
            f"{output_dir}: holds {len(inside)} of the input images (e.g. {inside[0]}); "
            "choose an --output folder that holds no input, e.g. a new folder beside them")
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir}: is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise ValueError(f"{output_dir}: cannot write there ({error.strerror or error})") \
            from None

