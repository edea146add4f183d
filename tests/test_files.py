import os
import subprocess
import sys

import pytest

from unet_cbam.files import atomic_write, is_temporary, remove_stale_temporaries, write_text


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == mode


def test_atomic_write_keeps_the_extension_and_marks_its_temporary(tmp_path):
    with atomic_write(tmp_path / "model.keras") as temporary:
        assert temporary.endswith(".keras")  # Keras and matplotlib pick formats by extension
        assert is_temporary(temporary)
        assert os.path.basename(temporary).startswith(f".unet_cbam-{os.getpid()}-model.keras.")
        with open(temporary, "w") as handle:
            handle.write("new")
    assert (tmp_path / "model.keras").read_text() == "new"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "a.txt") as temporary:
        with open(temporary, "w") as handle:
            handle.write("half")
        raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_only_our_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = _dead_pid()
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    stale = [tmp_path / f".unet_cbam-{dead}-a.png.k2j.tmp.png",
             tmp_path / "sub" / "deeper" / f".unet_cbam-{dead}-b.csv.x.tmp.csv"]
    kept = [tmp_path / ".notes.tmp",                                       # the user's
            tmp_path / ".a.png.abc.tmp",                                   # not our prefix
            tmp_path / f".unet_cbam-{os.getpid()}-c.png.q.tmp.png",        # alive: this process
            tmp_path / f".unet_cbam-{os.getppid()}-d.png.q.tmp.png"]       # alive: another one
    for path in stale + kept:
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path, depth=1) == [stale[0]]
    assert sorted(remove_stale_temporaries(tmp_path, depth=None)) == [stale[1]]
    assert all(path.exists() for path in kept)
