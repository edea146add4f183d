"""Cluster-scale prediction: --shard auto, --merge-summaries, the recipes."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from helpers import make_untrained_run
from unet_cbam.files import is_temporary
from unet_cbam.shards import merge_summaries, shard_from_environment, shard_summary_name
from unet_cbam.summary import SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("environ, count, expected", [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3"}, None, (1, 3)),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, None, (3, 3)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_MAX": "6"},
     None, (2, 3)),
    ({"JOB_COMPLETION_INDEX": "0"}, 4, (1, 4)),
    ({"JOB_COMPLETION_INDEX": "3", "UNET_CBAM_SHARD_COUNT": "4"}, None, (4, 4)),
])
def test_shard_auto_reads_slurm_arrays_and_indexed_jobs(environ, count, expected):
    assert shard_from_environment(environ, count) == expected


@pytest.mark.parametrize("environ, count, message", [
    ({}, None, "not in a SLURM job array"),
    ({"JOB_COMPLETION_INDEX": "1"}, None, "give --shard-count N or set UNET_CBAM_SHARD_COUNT"),
    ({"SLURM_ARRAY_TASK_ID": "1"}, None, "neither SLURM_ARRAY_TASK_COUNT"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, None, "'x' is not a number"),
    ({"JOB_COMPLETION_INDEX": "4"}, 4, "completion index 4 of 4 is outside 1..4"),
])
def test_shard_auto_fails_clearly(environ, count, message):
    with pytest.raises(ValueError, match=message):
        shard_from_environment(environ, count)


def _summary(folder: Path, index: int, count: int, rows: list[tuple[str, str]]) -> None:
    lines = [",".join(SUMMARY_COLUMNS)]
    lines += [f"{name},{status},{folder / name}.png,4,4,0.1,0.5," for name, status in rows]
    (folder / shard_summary_name(index, count)).write_text("\n".join(lines) + "\n")


def test_merge_reports_missing_shards_duplicates_failures_and_unpredicted(tmp_path):
    _summary(tmp_path, 1, 3, [("c", "ok"), ("a", "ok")])
    _summary(tmp_path, 3, 3, [("b", "failed"), ("a", "skipped")])
    report = merge_summaries(tmp_path, [Path(n) for n in ("a", "b", "c", "d")])
    assert (report.rows, report.shards) == (3, 3)
    assert report.missing_shards == [2] and report.duplicates == ["a"]
    assert report.failed == ["b"] and report.not_predicted == ["d"] and not report.ok
    with open(tmp_path / "summary.csv", newline="") as handle:
        merged = list(csv.DictReader(handle))
    assert [row["file"] for row in merged] == ["a", "b", "c"]
    _summary(tmp_path, 2, 3, [("d", "ok")])
    (tmp_path / shard_summary_name(3, 3)).unlink()
    _summary(tmp_path, 3, 3, [("b", "ok")])
    assert merge_summaries(tmp_path, [Path(n) for n in ("a", "b", "c", "d")]).ok


def test_merge_refuses_an_empty_folder_and_mixed_shard_counts(tmp_path, capsys):
    from unet_cbam.cli.predict import main

    assert main(["--merge-summaries", str(tmp_path)]) == 2
    assert "no shard summaries" in capsys.readouterr().err
    _summary(tmp_path, 1, 2, [("a", "ok")])
    _summary(tmp_path, 1, 3, [("a", "ok")])
    with pytest.raises(ValueError, match="different shard counts"):
        merge_summaries(tmp_path)


def test_shard_auto_outside_an_array_job_is_an_error(tmp_path, capsys, monkeypatch):
    from unet_cbam.cli.predict import main

    for name in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    run = make_untrained_run(tmp_path / "run", channels=1)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.zeros((8, 8), np.uint8))
    assert main(["--model", str(run), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--shard", "auto"]) == 2
    assert "--shard auto: not in a SLURM job array" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_recipes_parse():
    recipes = ROOT / "docs" / "cluster"
    for recipe in ("predict-array.sbatch", "train-multiworker.sbatch",
                   "train-folds-array.sbatch"):
        subprocess.run(["bash", "-n", str(recipes / recipe)], check=True)
    job = yaml.safe_load((recipes / "predict-indexed-job.yaml").read_text())
    assert job["spec"]["completionMode"] == "Indexed"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--shard") + 1] == "auto"


@pytest.mark.slow
def test_three_concurrent_shards_then_merge_equal_one_process(tmp_path):
    run = make_untrained_run(tmp_path / "run", channels=1)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(7):
        folder = images / "sub" if index % 3 == 0 else images
        cv2.imwrite(str(folder / f"i{index}.png"),
                    (rng.random((24 + 8 * index, 40)) * 255).astype(np.uint8))
    command = [sys.executable, "predict.py", "--model", str(run), "--input", str(images),
               "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JOB_"))}
    single = subprocess.run(command + ["--output", str(tmp_path / "single")], cwd=ROOT,
                            env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    shards = [subprocess.Popen(
        command + ["--output", str(tmp_path / "sharded"), "--shard", "auto"], cwd=ROOT,
        env={**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for task in range(3)]
    for process in shards:
        _, error = process.communicate(timeout=300)
        assert process.returncode == 0, error
    merged = subprocess.run([sys.executable, "predict.py", "--merge-summaries",
                             str(tmp_path / "sharded"), "--input", str(images)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert "7 input(s) from 3 shard(s)" in merged.stdout

    def masks(folder):
        return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.png"))}
    assert masks(tmp_path / "sharded") == masks(tmp_path / "single")
    assert len(masks(tmp_path / "single")) == 7
    assert not [p for p in (tmp_path / "sharded").rglob("*") if is_temporary(p)]
    with open(tmp_path / "sharded" / "summary.csv", newline="") as handle:
        assert sorted(row["file"] for row in csv.DictReader(handle)) == \
            sorted(str(p) for p in images.rglob("*.png"))
