"""allcls as a tool: a wheel of the checkout installed in a fresh virtualenv outside it, whose console
scripts work from a folder that is not the checkout, composing the configs shipped inside the
package (and a user's own with --config-dir)."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import FAST, PROJECT, SMALL_SYNTHETIC


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new virtualenv with allcls installed from a wheel built here, nothing else: its
    dependencies come from this environment's site-packages through a .pth file (installing torch
    and the rest again would take minutes), which adds their folder but not the editable install's
    finder (a .pth in an added folder is not run). Returns the virtualenv's bin/."""
    root = tmp_path_factory.mktemp("installed")
    source, wheels, venv = root / "source", root / "wheels", root / "venv"
    # The wheel is built from a copy of the checkout without what builds, runs and tools leave there
    # (a stale build/ folder would hand the wheel files that the package's declaration leaves out;
    # .venv, .git and the caches are large).
    left_by_runs = {"build", "allcls.egg-info", "mlruns", "outputs", "multirun", "data"}
    shutil.copytree(PROJECT, source, ignore=lambda folder, names: (
        [name for name in names if name in left_by_runs or name.startswith(".")] if Path(folder) == PROJECT
        else ["__pycache__"]))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(source)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (wheel,) = wheels.glob("allcls-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    return venv / "bin"


def run(bin_dir: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    return subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_installed_console_scripts_compose_the_shipped_configs_outside_the_checkout(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c", "import allcls, json; print(json.dumps(allcls.__file__))"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    package = Path(json.loads(where)).parent
    assert package.is_relative_to(installed.parent) and (package / "conf" / "train.yaml").is_file()
    assert not package.is_relative_to(PROJECT)  # the installed copy, not the checkout

    trained = run(installed, "allcls-train", *FAST, *SMALL_SYNTHETIC, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (job,) = client.search_runs([client.get_experiment_by_name("synthetic-cnmc").experiment_id])
    assert job.info.status == "FINISHED" and job.data.tags["mlflow.source.name"].endswith("allcls-train")
    assert list(tmp_path.glob("outputs/train/*/*/train.log"))  # the job's folder, named after its task

    own = tmp_path / "my_conf" / "experiment"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("# @package _global_\nexperiment_name: my-cells\n")
    # a group of the user's own beside the shipped ones (Hydra prints the composed job: no second training)
    mine = run(installed, "allcls-train", "--config-dir", str(tmp_path / "my_conf"), "experiment=mine", "--cfg", "job",
               cwd=tmp_path)
    assert mine.returncode == 0, mine.stderr[-3000:]
    assert "experiment_name: my-cells" in mine.stdout and "backbone:" in mine.stdout  # theirs, on the shipped ones

    refused = run(installed, "allcls-runs", "upload", str(tmp_path), cwd=tmp_path)
    assert refused.returncode == 2 and "is not a training job's folder" in refused.stderr
