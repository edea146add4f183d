"""Every notebook runs top to bottom with small parameters (papermill)."""

from pathlib import Path

import nbformat
import pytest

from unet_cbam.data.demo import generate_demo

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name, tmp_path, **parameters):
    output = tmp_path / name
    figures = tmp_path / "figures"
    papermill.execute_notebook(str(NOTEBOOKS / name), str(output), cwd=str(NOTEBOOKS),
                               parameters={**parameters, "figure_dir": str(figures)},
                               kernel_name="python3", progress_bar=False)
    notebook = nbformat.read(output, as_version=4)
    errors = [o for c in notebook.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    return notebook, sorted(p.name for p in figures.glob("*.png"))


def test_notebooks_are_stored_without_outputs_and_take_parameters():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path
        assert "parameters" in code[0].metadata.get("tags", []), path
        assert notebook.cells[0].cell_type == "markdown"
        assert "your" in notebook.cells[0].source.lower(), path  # says how to use your data
    assert len(list(NOTEBOOKS.glob("*.ipynb"))) == 4


@pytest.mark.slow
def test_explore_data_notebook(tmp_path):
    data = generate_demo(tmp_path / "demo", count=5)
    _, figures = _execute("01_explore_data.ipynb", tmp_path, data_dir=str(data), samples=3,
                          augmentation_examples=2)
    assert figures == ["01_augmentations.png", "01_class_balance.png", "01_samples.png"]


@pytest.mark.slow
def test_training_run_notebook(tmp_path, isbi_run):
    notebook, figures = _execute("02_training_run.ipynb", tmp_path, run_dir=str(isbi_run),
                                 compare_runs=[str(isbi_run)])
    assert figures == ["02_runs.png", "02_training_curves.png"]
    text = "".join(str(o.get("data", {}).get("text/markdown", ""))
                   for c in notebook.cells for o in c.get("outputs", []))
    assert "membrane" in text and "best epoch" in text


@pytest.mark.slow
def test_predictions_notebook(tmp_path, isbi_run, isbi_dir):
    data = tmp_path / "labelled"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
        for index in (24, 25):
            (data / kind / f"slice{index}.png").symlink_to(isbi_dir / kind / f"slice{index}.png")
    _, figures = _execute("03_predictions.ipynb", tmp_path, run_dir=str(isbi_run),
                          data_dir=str(data), max_images=2, worst=1, tile_size=256,
                          focus_class="membrane", label_next=1)
    assert figures == ["03_confusion_matrix.png", "03_label_next.png", "03_prediction.png",
                       "03_threshold_sweep.png", "03_worst1.png"]


@pytest.mark.slow
def test_attention_notebook(tmp_path, isbi_run, isbi_dir):
    from helpers import make_untrained_run

    data = tmp_path / "labelled"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
        (data / kind / "slice26.png").symlink_to(isbi_dir / kind / "slice26.png")
    baseline = make_untrained_run(tmp_path / "none_run", attention="none", channels=1,
                                  class_names=["membrane", "cell"])
    _, figures = _execute("04_attention.ipynb", tmp_path, run_dir=str(isbi_run),
                          data_dir=str(data), images=1, baseline_run=str(baseline),
                          style="heatmap")
    assert figures == ["04_attention1.png", "04_channel_weights.png", "04_comparison1.png"]
