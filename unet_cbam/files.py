"""Crash-consistent file writes, shared by every module that writes results.

A file that a later step trusts (model, config, history, masks, reports) is
written under a temporary name that only this tool makes and then renamed
over the final name, so a process killed at any instant leaves either the
previous complete file or the new complete file, never a truncated one.

Temporaries are named ``.unet_cbam-<pid>-<final name>.<random>.tmp<suffix>``:
the prefix marks them as ours (a user's ``.notes.tmp`` is never touched), the
pid says whether the process that made them is still alive, and the final
suffix keeps writers that choose a format by extension (Keras' ``.keras``,
matplotlib's ``.png``) working.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
import time
from pathlib import Path

TEMPORARY_PREFIX = ".unet_cbam-"
#: Tests only: pause inside the write window of files whose name matches this
#: pattern (after the temporary is complete, before the rename), announcing it by
#: creating the file named by PAUSE_MARKER_ENV, so a test can kill the process there.
PAUSE_AT_ENV = "UNET_CBAM_TEST_PAUSE_AT"
PAUSE_MARKER_ENV = "UNET_CBAM_TEST_PAUSE_MARKER"
_TEMPORARY = re.compile(r"^\.unet_cbam-(\d+)-.*\.tmp[^/]*$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class atomic_write:  # noqa: N801 (used like open())
    """Context manager giving a temporary path beside ``path``, renamed on success.

    The file gets the mode a plain ``open(path, "w")`` would give it (0666
    less the umask), not ``mkstemp``'s private 0600. On an exception the
    temporary is removed and ``path`` is left as it was.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, self.temporary = tempfile.mkstemp(
            prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-{self.path.name}.",
            suffix=f".tmp{''.join(self.path.suffixes[-2:])}", dir=self.path.parent)
        os.close(handle)
        os.chmod(self.temporary, 0o666 & ~_umask())
        return self.temporary

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            _pause_for_tests(self.path)
            os.replace(self.temporary, self.path)
        else:
            Path(self.temporary).unlink(missing_ok=True)


def _pause_for_tests(path: Path) -> None:
    pattern = os.environ.get(PAUSE_AT_ENV)
    if pattern and fnmatch.fnmatch(path.name, pattern):
        Path(os.environ[PAUSE_MARKER_ENV]).write_text(str(path))
        while True:  # until the test kills this process
            time.sleep(1)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as temporary:
        Path(temporary).write_text(text)


def is_temporary(path: str | Path) -> bool:
    """Whether ``path`` is a temporary that ``atomic_write`` made."""
    return _TEMPORARY.match(Path(path).name) is not None


def remove_stale_temporaries(folder: str | Path, depth: int | None = 1) -> list[Path]:
    """Remove temporaries of dead processes in ``folder`` and ``depth`` levels below it.

    ``depth`` None: the whole tree (symlinked folders are not followed).
    Only files named by ``atomic_write`` are candidates, and only those whose
    process is gone: a live writer's file (this process or another one
    working on the same folder) is left alone. Returns the removed paths.
    """
    folder = Path(folder)
    removed = []
    for directory, subfolders, names in os.walk(folder):
        here = Path(directory)
        if depth is not None and len(here.relative_to(folder).parts) >= depth:
            subfolders.clear()
        for name in names:
            match = _TEMPORARY.match(name)
            if match is None or _alive(int(match.group(1))):
                continue
            (here / name).unlink(missing_ok=True)
            removed.append(here / name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def one_line(error: BaseException, path: str | Path | None = None) -> str:
    """The error on one line, without a leading ``path: `` (callers name the file)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if path is not None and text.startswith(f"{path}: "):
        text = text[len(f"{path}: "):]
    return text
