"""Import boundaries: light modules stay light, libraries do not import their CLIs."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("keras", "tensorflow", "segmentation_models", "albumentations")


def _loaded_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               cwd=ROOT, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return set(completed.stdout.split())


@pytest.mark.parametrize("module", ["unet_cbam", "unet_cbam.config", "unet_cbam.inference",
                                    "unet_cbam.evaluate", "unet_cbam.run", "unet_cbam.files",
                                    "unet_cbam.tables"])
def test_light_modules_import_no_deep_learning_stack(module):
    loaded = _loaded_after(f"import {module}")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert not any(name.startswith("unet_cbam.cli") for name in loaded)


@pytest.mark.parametrize("script", ["train.py", "predict.py", "-m unet_cbam.cli.evaluate"])
def test_help_does_not_start_tensorflow(script):
    module = {"train.py": "unet_cbam.cli.train", "predict.py": "unet_cbam.cli.predict"}.get(
        script, "unet_cbam.cli.evaluate")
    loaded = _loaded_after(
        f"import contextlib, io\nimport {module} as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.slow
def test_predict_does_not_load_the_training_stack():
    loaded = _loaded_after("import unet_cbam.predict")
    assert "unet_cbam.training" not in loaded
    assert not loaded & {"albumentations", "unet_cbam.losses", "unet_cbam.data.dataset",
                         "segmentation_models"}


def test_the_package_sets_the_environment_once():
    import os

    sources = list((ROOT / "notebooks").glob("*.ipynb"))
    for folder, names, files in os.walk(ROOT):  # not into .venv, .git or the tests
        names[:] = [n for n in names if not n.startswith(".") and n != "tests"]
        sources += [Path(folder) / f for f in files if f.endswith(".py")]
    setting = [p.relative_to(ROOT) for p in sources
               if "NO_ALBUMENTATIONS_UPDATE" in p.read_text()]
    assert setting == [Path("unet_cbam/__init__.py")]


@pytest.mark.slow
@pytest.mark.parametrize("setting, pooled", [(None, True), ("false", False)])
def test_tensorflow_allocates_from_its_bfc_pool_unless_told_not_to(setting, pooled):
    """import unet_cbam chooses TensorFlow's BFC allocator on the CPU (README, "CPU memory
    allocator"); only a pool keeps statistics, so get_memory_info tells which one runs.
    Where TensorFlow turns oneDNN on by default (CPUs with AVX512_VNNI/BF16 or AMX) it
    allocates from oneDNN's pool whatever TF_CPU_ALLOCATOR_USE_BFC says, so the opt-out
    case turns oneDNN off too."""
    import os

    environment = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if setting is not None:
        environment["TF_CPU_ALLOCATOR_USE_BFC"] = setting
        environment["TF_ENABLE_ONEDNN_OPTS"] = "0"
    script = ("import unet_cbam\nimport tensorflow as tf\nx = tf.zeros((256, 256))\n"
              "try:\n    print(tf.config.experimental.get_memory_info('CPU:0')['current'] > 0)\n"
              "except ValueError:\n    print('malloc')")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               cwd=ROOT, env=environment, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split()[-1] == ("True" if pooled else "malloc")


def _import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports, at the top or inside a function."""
    import ast

    package = ROOT / "unet_cbam"
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            imported |= {target for target in targets if target in modules}
        # a package's __init__ re-exports its modules: importing them is not a dependency
        graph[name] = {target for target in imported
                       if target != name and not name.startswith(f"{target}.")}
    return graph


def test_the_package_has_no_import_circles():
    graph = _import_graph()
    circles, state = [], {}

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, [" -> ".join(circle) for circle in circles]


def test_arrows_point_down():
    """Data does not import prediction or training; libraries do not import their CLIs."""
    graph = _import_graph()
    upward = {"unet_cbam.inference", "unet_cbam.predict", "unet_cbam.loading",
              "unet_cbam.training", "unet_cbam.folds", "unet_cbam.models"}
    for module, targets in graph.items():
        if module.startswith("unet_cbam.data."):
            assert not targets & upward, (module, sorted(targets & upward))
        if not module.startswith("unet_cbam.cli") and module != "unet_cbam.__main__":
            assert not any(t.startswith("unet_cbam.cli") for t in targets), module
