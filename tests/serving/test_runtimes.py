"""A packaged model answers with ONNX Runtime by default, as its torch networks would, and loads and
answers in a Python without torch, Lightning or timm (only onnxruntime, numpy, pillow and MLflow)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import onnx
import pandas as pd
import pytest

from allcls.errors import AllclsError
from allcls.serving.package import package
from allcls.serving.quantize import check_drop
from allcls.tracking import registry
from allcls.tracking.tracker import Tracker

from helpers import (
    compose_config,
    models_uris_read_the_store,  # noqa: F401  (autouse: MLflow's store is the session's)
    sample_images,
)

CLASSES = ["hem", "all"]
NOT_HERE = ("torch", "torchvision", "lightning", "pytorch_lightning", "timm")


@pytest.mark.parametrize("name", ["cells", "ensemble"])
def test_onnx_runtime_answers_as_torch_does(store, registered, name):
    tracker = Tracker(f"sqlite:///{store['root']}/mlruns/mlflow.db")
    by_default = registry.load(tracker, f"models:/{name}@champion")
    with_torch = registry.load(tracker, f"models:/{name}@champion", runtime="torch")
    assert by_default.model.runtime == "onnx" and with_torch.model.runtime == "torch"
    export = by_default.spec.export
    assert export["format"] == "onnx" and export["label_agreement"] == 1.0 and export["max_abs_difference"] < 1e-4
    assert export["cells"] == int(store["client"].get_run(store["members"][0]).data.params["n_val"])
    frame = pd.DataFrame({"path": sample_images(store, 4)})
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


def test_int8_is_measured_on_test_answers_and_is_refused_past_its_setting(store, registered, tmp_path, caplog):
    """quantize=int8 (the member run's graphs, calibrated on its validation cells): the spec and the
    card say what it cost on test, the model answers with the int8 graphs, and a setting below the
    cost refuses to package, with the figures, leaving the run's model as it was."""
    run = store["members"][1]

    def package_int8(max_drop: float, folder: str) -> str:
        return package(compose_config("package", store["root"], [
            f"run_id={run}", "quantize=int8", f"quantize_max_drop={max_drop}", "overwrite=true", "bootstrap=100",
            "coverage=0.7", "ood.probes=false"], output_dir=tmp_path / folder))

    with caplog.at_level(logging.INFO, logger="allcls.serving.quantize"):
        uri = package_int8(0.99, "accepted")
    checked = [r.getMessage() for r in caplog.records if r.getMessage().startswith("int8 on test: balanced_accuracy")]
    assert len(checked) == 1  # the cost was checked against the setting before packaging went on
    model = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    export = model.spec.export
    assert export["quantized"] == "int8" and model.model.runtime == "onnx"
    on_test = export["int8_on_test"]
    assert set(on_test) == {"balanced_accuracy", "f1_weighted", "auroc"}
    for figures in on_test.values():
        for value, low, high in figures.values():
            assert 0 <= low <= value <= high <= 1
    folder = Path(store["client"].download_artifacts(run, "model", str(tmp_path / "model")))
    graph = onnx.load(str(next(folder.rglob("member_0.int8.onnx"))))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.graph.node}
    card = (folder / "model_card.md").read_text()
    before, after = on_test["balanced_accuracy"]["fp32"][0], on_test["balanced_accuracy"]["int8"][0]
    assert "quantised to int8" in card and f"test balanced accuracy {before:.3f} -> {after:.3f}" in card
    rows = model.predict(None, pd.DataFrame({"path": sample_images(store, 4)}))
    assert rows["label"].isin(CLASSES).all()

    # On the suite's barely trained members int8 may cost nothing (then the refusal is the next test's);
    # where it costs something, a setting below that cost refuses.
    drop = before - after
    if drop > 0:
        with pytest.raises(AllclsError, match=rf"quantize=int8 costs {drop:.3f} of test balanced accuracy, more than "
                                              r"quantize_max_drop=.*balanced_accuracy: .* -> "):
            package_int8(round(drop / 2, 6), "refused")
    assert mlflow.pyfunc.load_model(uri).unwrap_python_model().spec.export == export  # nothing replaced


def test_the_cost_of_int8_is_checked_against_its_setting():
    figures = {"balanced_accuracy": {"fp32": [0.900, 0.85, 0.95], "int8": [0.880, 0.83, 0.93]},
               "f1_weighted": {"fp32": [0.9, 0.85, 0.95], "int8": [0.89, 0.84, 0.94]},
               "auroc": {"fp32": [0.95, 0.9, 0.99], "int8": [0.95, 0.9, 0.99]}}
    check_drop(figures, 0.05)  # 2 points within 5: kept
    with pytest.raises(AllclsError, match=r"costs 0.020 of test balanced accuracy, more than quantize_max_drop=0.005: "
                                          r"balanced_accuracy: 0.900 \[0.850, 0.950\] -> 0.880 \[0.830, 0.930\] "
                                          r"\(-0.020\); f1_weighted"):
        check_drop(figures, 0.005)
