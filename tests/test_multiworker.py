"""Multi-worker training (MultiWorkerMirroredStrategy) and its cluster description."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unet_cbam.cli.train import main as train_main
from unet_cbam.data.demo import generate_demo
from unet_cbam.distribute import Cluster, describe_cluster
from unet_cbam.run import RunFolder

ROOT = Path(__file__).resolve().parents[1]


def _tf_config(ports, index, job="worker"):
    return json.dumps({"cluster": {job: [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": job, "index": index}})


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _environment(tf_config, temporary=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(TF_CONFIG=tf_config, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
               CUDA_VISIBLE_DEVICES="")
    if temporary is not None:
        temporary.mkdir(exist_ok=True)
        env["TMPDIR"] = str(temporary)
    return env


# -- the cluster description ---------------------------------------------------

def test_tf_config_names_the_task_and_the_chief():
    worker = describe_cluster({"TF_CONFIG": _tf_config([1, 2, 3], 2)})
    assert worker == Cluster("TF_CONFIG", 3, "worker", 2) and not worker.is_chief
    assert describe_cluster({"TF_CONFIG": _tf_config([1, 2], 0)}).is_chief
    with_chief = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                             "task": {"type": "worker", "index": 0}})
    cluster = describe_cluster({"TF_CONFIG": with_chief})
    assert cluster.num_workers == 3 and not cluster.is_chief  # the chief job is the chief


def test_slurm_job_step_is_a_cluster():
    cluster = describe_cluster({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4",
                                "SLURM_STEP_NODELIST": "node[1-4]"})
    assert cluster == Cluster("SLURM", 4, "worker", 1) and not cluster.is_chief


@pytest.mark.parametrize("value, message", [
    ("{cluster", "TF_CONFIG is malformed: not JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'needs a "cluster" object'),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
     "job(s) ps in the cluster"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
     "address 'a' is not \"host:port\""),
    ('{"cluster": {"worker": ["a:1"]}}', 'needs "task"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "task index 2 is not between 0 and 1"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     "task type 'chief' is not a job"),
])
def test_malformed_tf_config_is_named(value, message):
    with pytest.raises(ValueError, match="TF_CONFIG is malformed") as error:
        describe_cluster({"TF_CONFIG": value})
    assert message in str(error.value)


def test_no_cluster_description_says_what_to_set():
    with pytest.raises(ValueError, match="needs a cluster description"):
        describe_cluster({})


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs a cluster description"),
    ("{not json", "TF_CONFIG is malformed"),
])
def test_train_refuses_a_bad_cluster_before_any_work(tmp_path, monkeypatch, capsys, tf_config,
                                                     message):
    for name in [n for n in os.environ if n.startswith("SLURM_") or n == "TF_CONFIG"]:
        monkeypatch.delenv(name)
    if tf_config is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    run = tmp_path / "run"
    assert train_main(["--data", str(tmp_path / "nowhere"), "--output", str(run),
                       "--strategy", "multiworker"]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_slurm_resolver_builds_the_cluster_without_gpus(monkeypatch):
    from unet_cbam import distribute

    for name, value in {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2",
                        "SLURM_STEP_NODELIST": "node[07-08]",
                        "SLURM_STEP_TASKS_PER_NODE": "1(x2)", distribute.SLURM_PORT: "9999",
                        "PATH": "/nonexistent"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    resolver = distribute._resolver(describe_cluster())
    assert resolver.cluster_spec().as_dict() == {"worker": ["node07:9999", "node08:9999"]}
    assert resolver.get_task_info() == ("worker", 1)


def test_validation_shards_cover_every_patch_once_with_equal_counts():
    from test_data_dataset import _source

    from unet_cbam.data.dataset import validation_dataset

    rng = np.random.default_rng(0)
    images = [rng.random((40, 24, 3), np.float32), rng.random((16, 16, 3), np.float32)]
    labels = [rng.integers(0, 2, image.shape[:2]).astype(np.uint16) for image in images]
    source = _source(images, labels, num_classes=2)

    def valid_pixels(shard, multiple):
        dataset = validation_dataset(source, patch_size=16, batch_size=2, shard=shard,
                                     multiple=multiple)
        batches = [(x.numpy(), y.numpy()) for x, y in dataset]
        return batches, sum(float(y[..., -1].sum()) for _, y in batches)

    whole, pixels = valid_pixels((0, 1), 1)
    assert pixels == 40 * 24 + 16 * 16
    shards = [valid_pixels((i, 3), 3 * 2) for i in range(3)]
    assert sum(p for _, p in shards) == pixels                   # every pixel once
    assert len({tuple(x.shape for x, _ in b) for b, _ in shards}) == 1  # equal batches
    assert all(x.shape[0] == 2 for b, _ in shards for x, _ in b)


# -- two workers on localhost ------------------------------------------------------

@pytest.mark.slow
def test_two_workers_train_alike_and_a_killed_run_resumes(tmp_path):
    data = generate_demo(tmp_path / "demo", count=6)
    run = tmp_path / "run"
    options = ["--data", str(data), "--output", str(run), "--strategy", "multiworker",
               "--epochs", "3", "--steps-per-epoch", "6", "--batch-size", "4",
               "--patch-size", "32", "--depth", "2", "--base-filters", "4",
               "--lr-schedule", "constant", "--learning-rate", "0.01", "--quiet",
               "--cluster-timeout", "120s"]

    temporary = tmp_path / "tmp"

    def start(ports, index, command):
        return subprocess.Popen(command, cwd=ROOT,
                                env=_environment(_tf_config(ports, index), temporary),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # 1: both workers train one epoch, save their weights and die without clean-up.
    ports = _free_ports(2)
    workers = [start(ports, i, [sys.executable, "tests/multiworker_worker.py",
                                str(tmp_path / f"weights{i}.npz"), "--"] + options)
               for i in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [17, 17], outputs[0][-3000:] + outputs[1][-3000:]
    first, second = (np.load(tmp_path / f"weights{i}.npz") for i in range(2))
    assert len(first.files) > 10
    for name in first.files:  # the same weights on both workers, to the bit
        np.testing.assert_array_equal(first[name], second[name])
    folder = RunFolder(run)
    assert [c.epochs for c in folder.checkpoints()] == [1]
    assert [p.name[:18] for p in temporary.glob("unet-cbam-*")] == ["unet-cbam-worker1-"]

    # 2: the same commands with --resume continue after epoch 1 and finish.
    ports = _free_ports(2)
    workers = [start(ports, i, [sys.executable, "train.py", "--resume"] + options)
               for i in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "resuming after epoch 1" in outputs[0]
    assert "the chief wrote the run folder" in outputs[1]
    history = folder.read_history()
    assert history["epoch"] == [0, 1, 2]
    assert history["loss"][-1] < history["loss"][0]
    assert sorted(c.epochs for c in folder.checkpoints()) == [2, 3]
    assert folder.metrics_path.is_file() and folder.config.train.strategy == "multiworker"
    import keras

    import unet_cbam.layers  # noqa: F401  (registers the layers)
    model = keras.saving.load_model(folder.model_path, safe_mode=True, compile=False)
    assert model.output.shape[-1] == 1
    assert not list(temporary.glob("unet-cbam-*"))  # the killed worker's, then its own: gone


@pytest.mark.slow
def test_a_worker_that_never_comes_up_is_a_clear_timeout(tmp_path):
    data = generate_demo(tmp_path / "demo", count=3)
    run = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "train.py", "--data", str(data), "--output", str(run), "--strategy",
         "multiworker", "--cluster-timeout", "5s", "--quiet"],
        cwd=ROOT, env=_environment(_tf_config(_free_ports(2), 0)), capture_output=True,
        text=True, timeout=300)
    assert completed.returncode == -9  # killed by the watchdog: TensorFlow's wait cannot stop
    assert "train.py: error: the multi-worker cluster did not come up within 5 s" in \
        completed.stderr
    assert not run.exists()
