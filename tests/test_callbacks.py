"""The training callbacks: the time budget's pacer and overrun guard (on a fake clock), the
step timing it starts from, and early stopping that survives a resume."""

import numpy as np


def test_time_budget_guard_stops_an_overrun_with_a_fake_clock():
    """Inside an epoch, training stops once the wall time passes 102 % of the budget,
    validation and the data pipeline included."""
    from unet_cbam.callbacks import TimeBudget

    class Model:
        stop_training = False
    now = [0.0]
    guard = TimeBudget(100.0, clock=lambda: now[0])
    guard.set_model(Model())
    guard.on_train_begin()
    guard.on_epoch_begin(0)
    for _ in range(6):  # 6 batches of 10 s and 5 s between them: 90 s
        guard.on_train_batch_begin(0)
        now[0] += 10.0
        guard.on_train_batch_end(0)
        now[0] += 5.0
    assert not guard.model.stop_training
    guard.on_train_batch_begin(0)
    now[0] += 10.0
    guard.on_train_batch_end(0)  # 100 s: within 102 %
    assert not guard.model.stop_training
    now[0] += 1.0
    guard.on_train_batch_begin(0)
    now[0] += 10.0
    guard.on_train_batch_end(0)  # 111 s > 102 s
    assert guard.model.stop_training


def _paced(seconds_a_step, budget=100.0, steps=10, epochs=5, max_epochs=10, schedule=None,
           trace=0.0, validation=5.0, steps_run=None, initial_epoch=0, last_steps=None):
    """Fit's loop around a TimeBudget on a fake clock, ``validation`` seconds after each
    epoch's steps (or the seconds after epoch i: ``validation[i % len(validation)]``):
    (epochs run, wall seconds, the re-plans reported, the values agreed). ``steps_run``: a
    list that gets each epoch's steps. ``initial_epoch``, ``last_steps``: a resumed run's."""
    from unet_cbam.callbacks import TimeBudget

    class Model:
        stop_training = False
    now, replans, agreed = [0.0], [], []
    pacer = TimeBudget(budget, steps, epochs, max_epochs, schedule,
                       agree=lambda value: agreed.append(value) or value,
                       replanned=lambda *args: replans.append(args), clock=lambda: now[0],
                       last_steps=last_steps)
    pacer.set_model(Model())
    pacer.on_train_begin()
    run = 0
    for epoch in range(initial_epoch, max_epochs):
        pacer.on_epoch_begin(epoch)
        for step in range(steps):
            pacer.on_train_batch_begin(step)
            now[0] += seconds_a_step + (trace if epoch == initial_epoch and step == 0 else 0.0)
            pacer.on_train_batch_end(step)
            if pacer.model.stop_training:
                break
        if steps_run is not None:
            steps_run.append(step + 1)
        now[0] += validation[epoch % len(validation)] if isinstance(validation, list) \
            else validation  # counted: the budget is the whole command's
        pacer.on_epoch_end(epoch)
        run += 1
        if pacer.model.stop_training:
            break
    return run, now[0], replans, agreed


def test_time_budget_pacer_refits_the_epochs_to_the_real_pace_validation_included(caplog):
    # Planned 5 epochs of 10 steps; the steps take 1 s and validation 5 s: 15 s an epoch,
    # so after epoch 1 the 85 s left hold 5 more (never one that would end past 100 s),
    # and the 10 s after them a shorter 7th epoch of 5 steps and its validation.
    steps_run = []
    with caplog.at_level("INFO", logger="unet_cbam.callbacks"):
        run, wall, replans, agreed = _paced(1.0, steps_run=steps_run)
    # Keras' line for the shorter epoch reads 10/10 (its target): the log says what ran.
    assert "time budget: epoch 7, the last, stops after its 5 planned steps of 10" \
        in caplog.text
    assert (run, wall) == (7, 100.0) and steps_run == [10] * 6 + [5]
    assert replans == [(7, 1.0, 1, 5)]
    assert agreed[:2] == [7.0, 5.0]  # every worker takes the chief's values
    # 3 s a step: 35 s an epoch; after epoch 1, 65 s hold one more and then 8 steps.
    run, wall, replans, _ = _paced(3.0)
    assert (run, wall) == (3, 99.0) and replans == [(3, 3.0, 1, 8)]
    # The first step also traces the training function (20 s): spent, but not the pace.
    # The 5 s left then hold no steps besides validation: no shorter epoch.
    run, wall, replans, _ = _paced(1.0, trace=20.0)
    assert (run, wall) == (5, 95.0) and replans == []  # 5 fit, as planned
    # 2 s a step: 25 s an epoch, 4 epochs fill the budget exactly.
    assert _paced(2.0)[:3] == (4, 100.0, [(4, 2.0, 1, None)])
    # Without validation on plan: no re-plan, 5 epochs, exactly the budget.
    assert _paced(2.0, validation=0.0)[:3] == (5, 100.0, [])
    # Far slower than planned (25 s a step): the guard stops within the first epoch.
    run, wall, replans, _ = _paced(25.0)
    assert run == 1 and wall == 130.0 and replans == [(1, 25.0, 1, None)]


def test_time_budget_pacer_plans_from_the_mean_of_what_epochs_took_besides_their_steps():
    """Validation that costs 5 s and 25 s in turn (a slow pass every other epoch) re-plans
    from the mean, 15 s: the epochs settle at 10 of 25 s, moving by one, where planning from
    the last epoch alone swung them 16, 7, 15, 8, 14, 8, 12, 9, 11, 10. (After epoch 1,
    planned from its 5 s: 16 epochs and a shorter 17th.)"""
    run, wall, replans, _ = _paced(1.0, budget=250.0, epochs=10, max_epochs=20,
                                   validation=[5.0, 25.0])
    assert (run, wall) == (10, 250.0)
    assert [(epochs, last) for epochs, _, _, last in replans] == [
        (17, 5), (10, None), (11, None), (10, None), (11, None), (10, None)]


def test_time_budget_pacer_moves_the_schedule_horizon():
    import keras

    from unet_cbam.optim import MovableCosineDecay

    schedule = MovableCosineDecay(1e-3, 50 - 10, warmup_steps=10)
    _paced(1.0, schedule=schedule)
    assert float(schedule.decay_steps.numpy()) == 6 * 10 + 5 - 10  # the shorter 7th: 5
    reference = keras.optimizers.schedules.CosineDecay(1e-5, 55, alpha=0.01,
                                                       warmup_target=1e-3, warmup_steps=10)
    steps = np.array([0, 3, 10, 40, 64, 65, 140], np.int64)
    np.testing.assert_allclose([float(schedule(s)) for s in steps],
                               [float(reference(s)) for s in steps], rtol=1e-5)


def test_training_curves_are_redrawn_at_most_every_interval_and_at_the_end(tmp_path):
    from unet_cbam.callbacks import PlotHistory

    history, figure = tmp_path / "history.csv", tmp_path / "curves.png"
    now, drawn = [0.0], []
    plot = PlotHistory(history, figure, "run", interval=30.0, clock=lambda: now[0])
    plot.draw = lambda: drawn.append(now[0]) or PlotHistory.draw(plot)
    history.write_text("epoch,loss\n0,1.0\n")
    for seconds in (10.0, 10.0, 15.0, 40.0, 5.0):  # epochs ending at 10, 20, 35, 75, 80 s
        now[0] += seconds
        plot.on_epoch_end(0)
    assert drawn == [10.0, 75.0]  # the first epoch, then 30 s or more after a drawing
    plot.on_train_end()
    assert drawn == [10.0, 75.0, 80.0] and figure.read_bytes()[:4] == b"\x89PNG"
    plot.on_train_end()
    assert len(drawn) == 3  # nothing new since


def test_measure_step_seconds_times_only_the_steps_after_warm_up():
    from unet_cbam.callbacks import measure_step_seconds

    calls, now = [], [0.0]

    class Model:
        def train_on_batch(self, x, y):
            calls.append(x)
            now[0] += 2.0 if len(calls) <= 2 else 0.5  # tracing makes the first steps slow
    batches = iter([(i, i) for i in range(10)])
    model = Model()
    seconds, first = measure_step_seconds(lambda: model.train_on_batch(*next(batches)),
                                          warmup=2, timed=4, clock=lambda: now[0])
    assert (seconds, first) == (0.5, 2.0) and calls == list(range(6))
    # The median: one step held up by the data pipeline does not move it.
    pauses = iter([9.0, 1.0, 1.0, 1.0, 7.0, 1.2, 0.9])

    def step():
        now[0] += next(pauses)
    assert measure_step_seconds(step, warmup=1, timed=6, clock=lambda: now[0]) == (1.0, 9.0)


class _Model:
    stop_training = False


def _early_stopping(history, patience, monitor="val_loss"):
    from unet_cbam.callbacks import ResumableEarlyStopping

    callback = ResumableEarlyStopping(monitor, patience, history)
    callback.set_model(_Model())
    callback.on_train_begin()
    return callback


def test_early_stopping_continues_the_count_of_a_resumed_run():
    """Best at epoch 2 of 4 (0-based 1): two epochs waited already, one more stops a
    patience of 3, where Keras' own callback would wait three more."""
    callback = _early_stopping([0.5, 0.4, 0.45, 0.46], patience=3)
    assert (callback.best, callback.wait) == (0.4, 2)
    callback.on_epoch_end(4, {"val_loss": 0.41})
    assert callback.model.stop_training
    # A score improves upwards; ties keep the first best; a NaN epoch counts as waited.
    callback = _early_stopping([0.2, 0.6, float("nan"), 0.6], patience=5,
                               monitor="val_mean_dice")
    assert (callback.best, callback.wait) == (0.6, 2)
    callback.on_epoch_end(4, {"val_mean_dice": 0.7})
    assert (callback.best, callback.wait, callback.model.stop_training) == (0.7, 0, False)


def test_early_stopping_of_a_new_run_starts_from_nothing():
    callback = _early_stopping(None, patience=2)
    assert (callback.best, callback.wait) == (None, 0)
    for epoch, loss in enumerate([0.5, 0.6, 0.7]):
        callback.on_epoch_end(epoch, {"val_loss": loss})
    assert callback.model.stop_training


def test_a_resumed_pacer_keeps_the_shorter_last_epoch_it_planned():
    """A run killed in its shorter last epoch (7 planned, the last of 5 steps: the plan's
    ``last_epoch_steps``) resumes into that epoch and stops after its 5 steps, on the
    horizon of the steps planned, not 10 steps and a horizon of 7 whole epochs."""
    from unet_cbam.optim import MovableCosineDecay

    schedule = MovableCosineDecay(1e-3, 7 * 10 - 10, warmup_steps=10)  # movable_schedule's
    steps_run = []
    run, wall, replans, _ = _paced(1.0, budget=15.0, epochs=7, schedule=schedule,
                                   steps_run=steps_run, initial_epoch=6, last_steps=5)
    assert (run, wall, steps_run, replans) == (1, 10.0, [5], [])
    assert float(schedule.decay_steps.numpy()) == 6 * 10 + 5 - 10
    # Without it (as before), the resumed last epoch ran whole.
    steps_run = []
    assert _paced(1.0, budget=15.0, epochs=7, steps_run=steps_run, initial_epoch=6)[0] == 1
    assert steps_run == [10]


def test_the_plan_records_the_shorter_last_epoch_and_drops_it_when_re_planned_whole():
    from unet_cbam.config import DataConfig, RunConfig, TrainConfig
    from unet_cbam.plan import replan_epochs

    config = RunConfig(data=DataConfig(data="d"), train=TrainConfig(epochs=5, steps_per_epoch=10),
                       plan={"epochs": {"value": 5, "reason": "time_budget 100s: measured"}})
    shorter = replan_epochs(config, 7, 1.0, after=1, last_steps=5)
    assert shorter.plan["last_epoch_steps"]["value"] == 5
    assert shorter.train.epochs == 7
    assert shorter.plan["epochs"]["reason"] == (
        "time_budget 100s: measured; re-planned after epoch 1: 1 s a step in training, "
        "7 epochs fill the budget, the last of 5 steps")
    whole = replan_epochs(shorter, 6, 1.2, after=2)
    assert "last_epoch_steps" not in whole.plan and whole.train.epochs == 6
