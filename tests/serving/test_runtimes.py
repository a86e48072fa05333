"""A packaged model answers with ONNX Runtime by default, as its torch networks would, and loads and
answers in a Python without torch, Lightning or timm (only onnxruntime, numpy, pillow and MLflow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from allcls.tracking import registry
from allcls.tracking.tracker import Tracker

CLASSES = ["hem", "all"]
NOT_HERE = ("torch", "torchvision", "lightning", "pytorch_lightning", "timm")


def sample_images(store, count=4) -> list[str]:
    folder = next(Path(store["root"], "data", "synthetic").glob("cnmc-*"))
    return sorted(str(p) for p in (folder / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.bmp"))[:count]


@pytest.mark.parametrize("name", ["cells", "ensemble"])
def test_onnx_runtime_answers_as_torch_does(store, registered, name):
    tracker = Tracker(f"sqlite:///{store['root']}/mlruns/mlflow.db")
    by_default = registry.load(tracker, f"models:/{name}@champion")
    with_torch = registry.load(tracker, f"models:/{name}@champion", runtime="torch")
    assert by_default.model.runtime == "onnx" and with_torch.model.runtime == "torch"
    export = by_default.spec.export
    assert export["format"] == "onnx" and export["label_agreement"] == 1.0 and export["max_abs_difference"] < 1e-4
    assert export["cells"] == int(store["client"].get_run(store["members"][0]).data.params["n_val"])
    frame = pd.DataFrame({"path": sample_images(store)})
    for tta in (False, True):
        onnx_rows = by_default.predict(None, frame, {"tta": tta})
        torch_rows = with_torch.predict(None, frame, {"tta": tta})
        assert onnx_rows.drop(columns=[f"prob_{c}" for c in CLASSES] + ["ood_score"]).equals(
            torch_rows.drop(columns=[f"prob_{c}" for c in CLASSES] + ["ood_score"]))
        for column in [*(f"prob_{c}" for c in CLASSES), "ood_score"]:
            assert onnx_rows[column].to_numpy() == pytest.approx(torch_rows[column].to_numpy(), abs=1e-4), column


def test_an_unknown_runtime_is_refused_by_name(store, registered, monkeypatch):
    monkeypatch.setenv("ALLCLS_RUNTIME", "tensorrt")
    tracker = Tracker(f"sqlite:///{store['root']}/mlruns/mlflow.db")
    with pytest.raises(registry.ModelUnavailable, match="runtime='tensorrt' is not one of"):
        registry.load(tracker, "models:/cells@champion")


# A Python in which torch and its stack cannot be imported (a package of each name that refuses and
# says who asked), loading the registered model through MLflow alone and answering for two images.
WITHOUT_TORCH = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/ensemble@champion")
rows = model.predict(pd.DataFrame({"path": json.loads(sys.argv[2])}))
print(json.dumps({"labels": rows["label"].tolist(), "probabilities": rows["prob_all"].tolist(),
                  "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def test_a_packaged_model_loads_and_answers_without_torch(store, registered, tmp_path):
    shadow = tmp_path / "shadow"
    tried = tmp_path / "tried.txt"
    for name in NOT_HERE:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(
            f"import traceback\nopen({str(tried)!r}, 'a').write({name!r} + '\\n' + ''.join(traceback.format_stack()))\n"
            f"raise ImportError('{name} is not installed in this environment')\n")
    env = {**os.environ, "PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ALLCLS_AUDIT": "off", "TQDM_DISABLE": "1"}
    paths = sample_images(store, 2)
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, f"sqlite:///{store['root']}/mlruns/mlflow.db",
                           json.dumps(paths)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not tried.exists(), tried.read_text()[-3000:]  # nobody even tried to import them
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert not set(answer["modules"]) & set(NOT_HERE) and "onnxruntime" in answer["modules"]
    mlflow.set_tracking_uri(f"sqlite:///{store['root']}/mlruns/mlflow.db")
    in_process = mlflow.pyfunc.load_model("models:/ensemble@champion",
                                          model_config={"runtime": "torch"}).predict(pd.DataFrame({"path": paths}))
    assert answer["labels"] == in_process["label"].tolist()
    assert answer["probabilities"] == pytest.approx(in_process["prob_all"].tolist(), abs=1e-4)
