import numpy as np
import pytest
from matplotlib.figure import Figure

from unet_cbam.data.augment import augmentation_pipeline
from unet_cbam.visualize import (
    ERROR_COLORS,
    add_legend,
    class_colors,
    display_image,
    error_map,
    overlay,
    plot_attention,
    plot_augmentations,
    plot_channel_weights,
    plot_class_balance,
    plot_confusion_matrix,
    plot_history,
    plot_model_comparison,
    plot_prediction,
    plot_runs,
    plot_samples,
    plot_threshold_sweep,
)


def _image(shape=(20, 30, 3), seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _shown(axis):
    """The RGB(A) data of the first image drawn in an axis."""
    return np.asarray(axis.get_images()[0].get_array())


def test_error_map_colours_at_known_pixels():
    truth = np.array([[0, 0, 1, 1, 2, 65535]], np.uint16)
    prediction = np.array([[0, 1, 1, 0, 1, 1]])
    colors = error_map(truth, prediction, ignore_label=65535)
    assert tuple(colors[0, 0]) == ERROR_COLORS["true negative"]
    assert tuple(colors[0, 1]) == ERROR_COLORS["false positive"]
    assert tuple(colors[0, 2]) == ERROR_COLORS["true positive"]
    assert tuple(colors[0, 3]) == ERROR_COLORS["false negative"]
    assert tuple(colors[0, 4]) == ERROR_COLORS["wrong class"]
    assert tuple(colors[0, 5]) == ERROR_COLORS["ignored"]
    assert ERROR_COLORS["false positive"] != ERROR_COLORS["false negative"]


def test_overlay_tints_only_labelled_pixels():
    image = np.full((2, 2, 1), 0.5, np.float32)
    labels = np.array([[0, 1], [2, 0]])
    colors = class_colors(3)
    result = overlay(image, labels, colors, alpha=0.5)
    assert tuple(result[0, 0]) == (128, 128, 128)
    expected = np.round(0.5 * 128 + 0.5 * colors[1].astype(float)).astype(np.uint8)
    np.testing.assert_array_equal(result[0, 1], expected)
    assert display_image(np.zeros((2, 2, 5))).shape == (2, 2, 3)


def test_legend_adds_a_strip_per_class():
    picture = np.zeros((10, 60, 3), np.uint8)
    with_legend = add_legend(picture, ["bg", "a", "b"], class_colors(3))
    assert with_legend.shape[1] == 60 and with_legend.shape[0] == 10 + 2 * 18 + 6
    np.testing.assert_array_equal(with_legend[:10], picture)


def test_prediction_figure_shows_the_inputs():
    image = _image()
    truth = np.zeros((20, 30), np.uint16)
    truth[5:10, 5:10] = 1
    prediction = np.zeros((20, 30), np.int64)
    prediction[5:10, 8:14] = 1
    figure = plot_prediction(image, truth, prediction, ["bg", "cell"], title="x")
    assert isinstance(figure, Figure)
    axes = figure.axes
    assert len(axes) == 4
    np.testing.assert_array_equal(_shown(axes[0]), display_image(image))
    np.testing.assert_array_equal(_shown(axes[3]), error_map(truth, prediction))
    assert tuple(_shown(axes[3])[5, 12]) == ERROR_COLORS["false positive"]
    assert tuple(_shown(axes[3])[5, 6]) == ERROR_COLORS["false negative"]


def test_samples_grid_and_augmentations():
    samples = [(f"s{i}", _image(seed=i), np.eye(20, 30, dtype=np.uint16)) for i in range(5)]
    figure = plot_samples(samples, ["bg", "fg"], columns=3)
    visible = [axis for axis in figure.axes if axis.get_visible()]
    assert len(visible) == 5
    assert visible[2].get_title() == "s2"
    np.testing.assert_array_equal(_shown(visible[0]),
                                  overlay(samples[0][1], samples[0][2], class_colors(2)))
    square = _image((32, 32, 3))
    labels = np.zeros((32, 32), np.uint16)
    labels[:8] = 1
    pipelines = {"none": augmentation_pipeline("none"), "light": augmentation_pipeline("light")}
    figure = plot_augmentations(square, labels, pipelines, examples=3)
    assert len(figure.axes) == 2 * 4
    np.testing.assert_array_equal(_shown(figure.axes[1]), overlay(square, labels,
                                                                  class_colors(2)))


def test_attention_figure_levels_and_styles():
    maps = {0: {"spatial": np.full((16, 16), 0.25), "channel": np.linspace(0, 1, 8)},
            1: {"spatial": np.full((8, 8), 0.75), "channel": np.linspace(0, 1, 16)}}
    figure = plot_attention(_image((16, 16, 1)), maps, style="heatmap")
    titles = [axis.get_title() for axis in figure.axes]
    assert "level 0 (stride 1) spatial" in titles and "level 1 channel weights" in titles
    heat = [a for a in figure.axes if a.get_title() == "level 1 (stride 2) spatial"][0]
    np.testing.assert_array_equal(np.asarray(heat.get_images()[0].get_array()), maps[1]["spatial"])
    bars = [a for a in figure.axes if a.get_title() == "level 0 channel weights"][0]
    heights = sorted(p.get_height() for p in bars.patches)
    np.testing.assert_allclose(heights, np.linspace(0, 1, 8))
    with pytest.raises(ValueError, match="style"):
        plot_attention(_image(), maps, style="3d")


def test_channel_weight_distribution_and_runs_and_sweep():
    maps = {1: {"channel": np.array([0.1, 0.9])}, 2: {"channel": np.array([0.5, 0.6, 0.7])}}
    figure = plot_channel_weights(maps)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == \
        ["level 1\n(stride 2)", "level 2\n(stride 4)"]
    with pytest.raises(ValueError, match="no channel attention"):
        plot_channel_weights({1: {"spatial": np.zeros((2, 2))}})
    histories = {"a": {"epoch": [0, 1], "val_mean_dice": [0.5, 0.6]},
                 "b": {"epoch": [0, 1, 2], "val_mean_dice": [0.4, 0.5, 0.7]}}
    axis = plot_runs(histories).axes[0]
    assert [line.get_label() for line in axis.lines] == ["a", "b"]
    np.testing.assert_array_equal(axis.lines[1].get_ydata(), [0.4, 0.5, 0.7])
    sweep = {"thresholds": np.array([0.3, 0.5, 0.7]), "dice": np.array([[0.8, 0.6],
                                                                         [0.9, 0.7],
                                                                         [0.85, 0.5]])}
    axis = plot_threshold_sweep(sweep, ["bg", "fg"]).axes[0]
    labels = [line.get_label() for line in axis.lines]
    assert "bg (best 0.900 at 0.50)" in labels and "fg (best 0.700 at 0.50)" in labels


def test_history_and_class_balance_and_comparison():
    history = {"epoch": [0, 1], "loss": [1.0, 0.5], "val_loss": [1.1, 0.7],
               "dice_cell": [0.5, 0.7], "val_dice_cell": [0.4, 0.6], "mean_dice": [0.5, 0.7],
               "val_mean_dice": [0.4, 0.6], "learning_rate": [1e-3, 5e-4]}
    figure = plot_history(history)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:2] == ["loss", "Dice"] and "learning rate" in titles
    lr_axis = figure.axes[titles.index("learning rate")]
    np.testing.assert_array_equal(lr_axis.lines[0].get_ydata(), [1e-3, 5e-4])
    balance = plot_class_balance({"bg": 0.75, "fg": 0.25}).axes[0]
    assert [round(p.get_width(), 2) for p in balance.patches] == [0.75, 0.25]
    truth = np.zeros((20, 30), np.uint16)
    figure = plot_model_comparison(_image(), truth, {"a": truth.astype(int),
                                                     "b": np.ones((20, 30), int)}, ["bg", "fg"])
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == ["image", "a", "b", "ground truth", "a: errors", "b: errors"]


def test_confusion_matrix_rows_are_shares_of_the_true_class():
    axis = plot_confusion_matrix([[90, 10, 0], [5, 15, 0], [0, 0, 0]], ["a", "b", "c"]).axes[0]
    shares = axis.images[0].get_array()
    np.testing.assert_allclose(shares[:2], [[0.9, 0.1, 0.0], [0.25, 0.75, 0.0]])
    assert np.isnan(np.ma.getdata(shares)[2]).all()     # no pixels of c: an empty row
    assert sorted(t.get_text() for t in axis.texts) == ["10%", "25%", "75%", "90%"]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["a", "b", "c"]
