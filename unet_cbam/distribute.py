"""tf.distribute: one device, every local GPU, or several machines, and the training loop
that several machines need.

Strategies (``--strategy``):

- ``default``: TensorFlow's default strategy (one device);
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over the local GPUs;
- ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over several processes,
  usually one per machine. The cluster comes from ``TF_CONFIG`` or, without it, from a SLURM
  job step through ``tf.distribute.cluster_resolver.SlurmClusterResolver`` (``srun`` with one
  task per node; port ``UNET_CBAM_SLURM_PORT``, default 8888).

``--batch-size`` is the *global* batch under every strategy: each of the N replicas computes
``batch_size / N`` patches of each step, and the gradients are summed by the strategy's
all-reduce. So a run on N machines follows the same optimisation as on one (same learning
rate, steps and schedule), only faster; to use more memory per machine, raise the batch size
(and consider the learning rate, e.g. linearly with the batch).

Keras 3's ``Model.fit`` does not run under MultiWorkerMirroredStrategy
(keras-team/keras#20585, still open; reproduced with TF 2.21 / Keras 3.15: its epoch iterator
hands PerReplica values to the model). ``DistributedLoop`` is the training loop for that
strategy: it runs the model's own ``train_step`` / ``test_step`` (so the compiled loss,
metrics, optimizer and loss scaling are exactly fit's) through ``strategy.run`` over
distributed datasets, and calls the same Keras callbacks with the same logs, so checkpoints,
history, best model, plots, TensorBoard, early stopping and the time budget behave as under
``fit``. The single-machine strategies keep ``fit``: one loop per strategy.

Everything here that reads the cluster description (``describe_cluster``) is pure Python, so
train.py can refuse a bad one before importing TensorFlow.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # distribute is imported before TensorFlow may start (multiworker)
    import keras
    import tensorflow as tf

logger = logging.getLogger(__name__)

TF_CONFIG = "TF_CONFIG"
SLURM_PORT = "UNET_CBAM_SLURM_PORT"
#: Jobs MultiWorkerMirroredStrategy trains with (TF_CONFIG may name no others).
JOBS = ("chief", "worker")


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in a multi-worker cluster."""

    source: str          # "TF_CONFIG" or "SLURM"
    num_workers: int     # processes that train (chief included)
    task_type: str
    task_index: int

    @property
    def is_chief(self) -> bool:
        """The chief writes the run folder: task ``chief``, or worker 0 when there is none."""
        return self.task_type == "chief" or (self.task_type == "worker"
                                             and self.task_index == 0
                                             and not self._has_chief)

    _has_chief: bool = False

    def __str__(self) -> str:
        return (f"{self.task_type} {self.task_index} of {self.num_workers} worker(s) "
                f"(from {self.source}{', chief' if self.is_chief else ''})")


def describe_cluster(environ: Mapping[str, str] | None = None) -> Cluster:
    """The cluster from ``TF_CONFIG`` or a SLURM job step; ValueError saying what is wrong."""
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG, "").strip()
    if text:
        return _cluster_from_tf_config(text)
    if all(environ.get(f"SLURM_{name}") for name in ("PROCID", "STEP_NUM_TASKS",
                                                     "STEP_NODELIST")):
        try:
            index, count = int(environ["SLURM_PROCID"]), int(environ["SLURM_STEP_NUM_TASKS"])
        except ValueError:
            raise ValueError("SLURM_PROCID and SLURM_STEP_NUM_TASKS must be integers, got "
                             f"{environ['SLURM_PROCID']!r} and "
                             f"{environ['SLURM_STEP_NUM_TASKS']!r}") from None
        return Cluster("SLURM", count, "worker", index)
    raise ValueError(
        "--strategy multiworker needs a cluster description and there is none: set TF_CONFIG "
        '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": '
        '"worker", "index": 0}}) on every worker, or start one task per node with srun inside '
        "a SLURM allocation")


def _cluster_from_tf_config(text: str) -> Cluster:
    def bad(problem: str) -> ValueError:
        return ValueError(f"TF_CONFIG is malformed: {problem}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise bad(f"not JSON ({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise bad('needs a "cluster" object, e.g. {"worker": ["host1:12345", "host2:12345"]}')
    cluster = config["cluster"]
    unknown = sorted(set(cluster) - set(JOBS))
    if unknown:
        raise bad(f"job(s) {', '.join(unknown)} in the cluster; MultiWorkerMirroredStrategy "
                  "trains with 'chief' and 'worker' only")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise bad(f'cluster "{job}" must be a non-empty list of "host:port" addresses')
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit():
                raise bad(f'cluster "{job}" address {address!r} is not "host:port"')
    if len(cluster.get("chief", [])) > 1:
        raise bad('a cluster has at most one "chief"')
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise bad('needs "task": {"type": ..., "index": ...} naming this process')
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise bad(f"task type {task_type!r} is not a job of the cluster "
                  f"({', '.join(cluster)})")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise bad(f"task index {index!r} is not between 0 and {len(cluster[task_type]) - 1} "
                  f"({len(cluster[task_type])} {task_type} address(es))")
    count = sum(len(addresses) for addresses in cluster.values())
    return Cluster("TF_CONFIG", count, task_type, index, _has_chief="chief" in cluster)


# --------------------------------------------------------------------------
# strategies (TensorFlow from here on)
# --------------------------------------------------------------------------

_multiworker = None  # MultiWorkerMirroredStrategy can be created once per process


def make_strategy(name: str, cluster_timeout: float = 600.0):
    """The strategy ``name`` (default, mirrored or multiworker).

    ``multiworker`` is created once per process (TensorFlow allows no second), must come
    before TensorFlow runs anything else, and waits at most ``cluster_timeout`` seconds for
    every worker: TensorFlow's own wait has no limit, so a worker that never comes up would
    hang the others forever. Past the limit, the process says which cluster it waited for
    and is killed (see ``deadline``).
    """
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        logger.info("MirroredStrategy over %d replica(s)", strategy.num_replicas_in_sync)
        return strategy
    if name != "multiworker":
        return tf.distribute.get_strategy()
    global _multiworker
    if _multiworker is None:
        cluster = describe_cluster()
        resolver = _resolver(cluster)
        spec = resolver.cluster_spec().as_dict()
        message = (f"error: the multi-worker cluster did not come up within "
                   f"{cluster_timeout:g} s (cluster_timeout): this is {cluster}, waiting for "
                   f"{json.dumps(spec)}; check that every worker was started with the same "
                   "cluster and can reach the others' addresses")
        with deadline(cluster_timeout, message):
            strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
            chief_value(strategy, 0.0)  # a barrier: every worker is up
        logger.info("MultiWorkerMirroredStrategy: %s, %d replica(s) in sync", cluster,
                    strategy.num_replicas_in_sync)
        _multiworker = strategy
    return _multiworker


def _resolver(cluster: Cluster):
    import tensorflow as tf

    if cluster.source == "TF_CONFIG":
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    port = int(os.environ.get(SLURM_PORT, "8888"))
    if os.environ.get("CUDA_VISIBLE_DEVICES") or shutil.which("nvidia-smi"):
        return tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=port)
    # No GPUs: the resolver would still hand out GPU ids per task (and call nvidia-smi).
    return tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=port, gpus_per_node=1024, gpus_per_task=1, auto_set_gpu=False)


#: The watchdog of ``deadline``: waits for its standard input to close (the block
#: finished) or the time to pass, then says why and kills the process it watches.
_WATCHDOG = """
import os, select, signal, sys
pid, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], seconds)[0]:
    print(message, file=sys.stderr, flush=True)
    os.kill(pid, signal.SIGKILL)
"""


@contextmanager
def deadline(seconds: float, message: str) -> Iterator[None]:
    """Kill this process, saying ``message``, unless the block finishes within ``seconds``.

    For waits inside TensorFlow that have no timeout of their own. They block in C++
    without letting Python threads or signal handlers run (a timer thread never fired, and
    SIGTERM was ignored), so the watchdog is a small separate process that ends this one
    with SIGKILL.
    """
    program = os.path.basename(sys.argv[0]) or "unet_cbam"
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()),
                                 str(seconds), f"{program}: {message}"],
                                stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def is_multiworker(strategy) -> bool:
    """Whether ``strategy`` spans several machines (its own training loop runs them)."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder (always, outside multiworker)."""
    return not is_multiworker(strategy) or describe_cluster().is_chief


def chief_value(strategy, value: float) -> float:
    """The chief's ``value`` on every worker (an all-reduce to which only replica 0, on the
    chief, contributes). Every worker must call it at the same point."""
    if not is_multiworker(strategy):
        return value
    return _sum_over_replicas(strategy, value, first_only=True)


def any_worker(strategy, flag: bool) -> bool:
    """True on every worker when ``flag`` is true on any (e.g. a callback stopped training)."""
    if not is_multiworker(strategy):
        return flag
    return _sum_over_replicas(strategy, float(flag), first_only=False) > 0


@functools.cache
def _replica_sum(strategy):
    """A traced all-reduce of one number per replica (eager collectives are slow)."""
    import tensorflow as tf

    @tf.function
    def replica_sum(value, first_only):
        def contribute():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            keep = tf.logical_or(tf.logical_not(first_only), tf.equal(replica, 0))
            return tf.where(keep, value, 0.0)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribute), axis=None)
    return replica_sum


def _sum_over_replicas(strategy, value: float, first_only: bool) -> float:
    import tensorflow as tf

    return float(_replica_sum(strategy)(tf.constant(value, tf.float32),
                                        tf.constant(first_only)))


def statistics_averager(model, strategy) -> Callable[[], None]:
    """A function that sets ``model``'s non-trainable float variables (batch
    normalisation's moving statistics) to their mean over the replicas.

    They are replica-local in Keras 3 (aggregation "none"): under MirroredStrategy and
    MultiWorkerMirroredStrategy each replica's copy follows its own share of the batches,
    and a saved model holds the first replica's. Their mean, taken after each epoch, is what
    Keras 2 kept by averaging at every step (a moving average is linear), and leaves every
    replica with the same weights. One all-reduce of all of them, flattened. With one
    replica: nothing to do.
    """
    import tensorflow as tf

    statistics = [v for v in model.non_trainable_variables if tf.as_dtype(v.dtype).is_floating]
    if strategy.num_replicas_in_sync == 1 or not statistics:
        return lambda: None
    sizes = [int(np.prod(v.shape)) for v in statistics]

    @tf.function
    def average():
        local = strategy.run(lambda: tf.concat(
            [tf.reshape(tf.cast(v.value, tf.float32), [-1]) for v in statistics], 0))
        means = strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None)
        for variable, mean in zip(statistics, tf.split(means, sizes), strict=True):
            variable.assign(tf.cast(tf.reshape(mean, variable.shape), variable.dtype))
    return average


# --------------------------------------------------------------------------
# the training loop for MultiWorkerMirroredStrategy
# --------------------------------------------------------------------------

class DistributedLoop:
    """``Model.fit`` for MultiWorkerMirroredStrategy (see the module docstring).

    Args:
        model: compiled under ``strategy.scope()``.
        strategy: the MultiWorkerMirroredStrategy.
        training: ``input_context -> tf.data.Dataset`` of this worker's endless per-replica
            batches (``input_context.get_per_replica_batch_size``).
        validation: ``input_context -> tf.data.Dataset`` of this worker's share of the
            validation batches; every worker must get the same number of batches.
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy,
                 training: Callable, validation: Callable | None = None):
        import tensorflow as tf

        self.model, self.strategy = model, strategy
        example = training(tf.distribute.InputContext())
        with strategy.scope():  # what fit builds before its first step: metrics, optimizer
            model._symbolic_build(data_batch=example.element_spec)
        self._train_iterator = iter(strategy.distribute_datasets_from_function(training))
        self._validation = None if validation is None else \
            strategy.distribute_datasets_from_function(validation)

        @tf.function
        def train_step(iterator):
            strategy.run(model.train_step, args=(next(iterator),))

        @tf.function
        def test_step(batch):
            strategy.run(model.test_step, args=(batch,))

        self._train_step, self._test_step = train_step, test_step
        self._average_statistics = statistics_averager(model, strategy)

    def train_step(self) -> None:
        """One step on the next batch (every worker at once)."""
        self._train_step(self._train_iterator)

    def logs(self, prefix: str = "") -> dict[str, float]:
        """The compiled metrics over every worker (a collective: all workers call it)."""
        return {prefix + name: float(value)
                for name, value in self.model.get_metrics_result().items()}

    def evaluate(self) -> dict[str, float]:
        """One validation pass over this worker's shard; the ``val_`` logs, summed over workers."""
        self.model.reset_metrics()
        for batch in self._validation:
            self._test_step(batch)
        return self.logs("val_")

    def fit(self, *, epochs: int, initial_epoch: int, steps_per_epoch: int,
            callbacks: list, verbose: int = 1) -> None:
        """Epochs ``initial_epoch .. epochs - 1`` of ``steps_per_epoch`` steps, as fit runs
        them: callbacks before and after each batch and epoch, validation after each epoch,
        and a stop (early stopping, the time budget) on every worker when any asks for it."""
        import keras

        model = self.model
        callback_list = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=verbose != 0, model=model,
            verbose=verbose, epochs=epochs, steps=steps_per_epoch)
        model.stop_training = False
        callback_list.on_train_begin()
        logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callback_list.on_epoch_begin(epoch)
            for step in range(steps_per_epoch):
                callback_list.on_train_batch_begin(step)
                self.train_step()
                callback_list.on_train_batch_end(step)
                if any_worker(self.strategy, model.stop_training):
                    model.stop_training = True
                    break
            self._average_statistics()
            logs = self.logs()
            if self._validation is not None:
                logs.update(self.evaluate())
            callback_list.on_epoch_end(epoch, logs)
            if any_worker(self.strategy, model.stop_training):
                break
        callback_list.on_train_end(logs)
