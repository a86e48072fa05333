"""evaluate.py against real MLflow runs: a training run, an ensemble run, a checkpoint file, another
dataset; what it logs, and how it refuses."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from allcls.errors import AllclsError
from allcls.evaluation.task import evaluate
from allcls.predictions import read_table

from helpers import SMALL_SYNTHETIC, artifacts, compose_config

PLOTS = {"confusion_matrix.png", "roc.png", "precision_recall.png", "reliability.png", "per_subject.png"}


def evaluate_with(store, tmp_path, *overrides):
    """evaluate.py with these overrides; the gate's probes only where a test asks for them (seconds each)."""
    cfg = compose_config("evaluate", store["root"], ["bootstrap=200", "num_workers=0", "ood.probes=false", *overrides],
                         output_dir=tmp_path / "eval")
    score = evaluate(cfg)
    client = store["client"]
    runs = client.search_runs([store["experiment_id"]], "tags.stage = 'evaluate'",
                              order_by=["attributes.start_time DESC"])
    return score, runs[0], client



def test_evaluating_a_run_uses_its_logged_predictions_and_nests_the_result(store, tmp_path):
    trained = store["client"].get_run(store["members"][0])
    score, run, client = evaluate_with(store, tmp_path, f"run_id={trained.info.run_id}", "ood.probes=true")
    assert run.data.tags["mlflow.parentRunId"] == trained.info.run_id
    assert run.data.tags["evaluated_run_id"] == trained.info.run_id and run.data.tags["split"] == "test"
    assert run.data.params["predictions"] == "logged by the evaluated run"
    metrics = run.data.metrics
    # the same table that training scored: the same numbers
    assert metrics["test/f1_weighted"] == pytest.approx(trained.data.metrics["test/f1_weighted"], abs=1e-6)
    assert score == pytest.approx(metrics["test/f1_weighted"])
    assert metrics["test/f1_weighted_ci_low"] <= score <= metrics["test/f1_weighted_ci_high"]
    for name in ("test/recall_hem", "test/specificity_all", "test/ece", "test/calibrated/ece",
                 "calibration/temperature", "test/auroc_ci_high"):
        assert name in metrics, name
    found = artifacts(client, run.info.run_id)
    assert {f"plots/{p}" for p in PLOTS} <= found
    assert {"metrics/metrics.csv", "metrics/per_subject.csv", "predictions/test.parquet"} <= found
    per_subject = pd.read_csv(client.download_artifacts(run.info.run_id, "metrics/per_subject.csv", str(tmp_path)))
    assert per_subject["cells"].sum() == int(trained.data.params["n_test"])
    # the out-of-distribution gate of a tiny trained model: photographs, documents, noise and flat colour
    # refused, its own test cells mostly passed
    assert metrics["test/ood/probe/all_far_probes/rejected"] >= 0.99
    assert metrics["test/ood/rejected"] <= 0.15
    assert {"metrics/ood_probes.csv", "metrics/patients.csv", "predictions/test_decisions.csv"} <= found


def test_tta_and_gradcam_reload_the_checkpoint_and_log_side_by_side(store, tmp_path, capsys):
    _, run, client = evaluate_with(store, tmp_path, f"run_id={store['members'][1]}", "split=val", "ood.enabled=false",
                                   "tta.enabled=true",
                                   "tta.views=[identity,hflip,vflip]", "gradcam.enabled=true",
                                   "gradcam.samples_per_class=2")
    metrics = run.data.metrics
    assert "val/f1_weighted" in metrics and "val/tta/f1_weighted" in metrics
    assert run.data.params["tta"] == "identity,hflip,vflip"
    found = artifacts(client, run.info.run_id)
    assert {"predictions/val.parquet", "predictions/val_tta.parquet", "gradcam/val.png"} <= found
    tta = read_table(client.download_artifacts(run.info.run_id, "predictions/val_tta.parquet", str(tmp_path)))
    plain = read_table(client.download_artifacts(run.info.run_id, "predictions/val.parquet", str(tmp_path)))
    assert tta["sample_id"].tolist() == plain["sample_id"].tolist()
    progress = capsys.readouterr().err  # every long step shows a progress bar
    for step in ("Predicting with TTA: ", "x 3 view(s)", "Grad-CAM of 4 images", "Bootstrap (200 replicates"):
        assert step in progress, step


def test_tqdm_disable_switches_the_bars_off():
    """As the README says: TQDM_DISABLE=1 (read by tqdm when it is imported) hides every bar."""
    script = "from allcls.progress import progress\nfor _ in progress(range(3), desc='Predicting'): pass"
    for disabled, shown in (("1", False), ("", True)):
        env = {**os.environ, "TQDM_DISABLE": disabled}
        err = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True).stderr
        assert ("Predicting" in err) == shown, err


def test_an_ensemble_is_evaluated_like_a_model(store, tmp_path, ensemble_run):
    _, run, client = evaluate_with(store, tmp_path, f"run_id={ensemble_run}", "ood.enabled=false", "tta.enabled=true",
                                   "tta.views=[identity,rot90]", "gradcam.enabled=true", "gradcam.samples_per_class=1")
    assert run.data.tags["evaluated_kind"] == "ensemble"
    # the same test split as the ensemble run scored: the same numbers (its intervals had other replicates)
    scored = {name: value for name, value in client.get_run(ensemble_run).data.metrics.items()
              if name.startswith("test/") and "_ci_" not in name}
    assert {"test/f1_weighted", "test/auroc", "test/log_loss"} <= set(scored)
    assert {name: run.data.metrics[name] for name in scored} == pytest.approx(scored, abs=1e-6)
    assert "test/tta/f1_weighted" in run.data.metrics
    assert "gradcam/test.png" in artifacts(client, run.info.run_id)


def test_the_training_split_is_predicted_afresh(store, tmp_path):
    _, run, _ = evaluate_with(store, tmp_path, f"run_id={store['members'][0]}", "split=train", "ood.enabled=false")
    assert run.data.params["predictions"] == "recomputed"
    assert "train/f1_weighted" in run.data.metrics


def test_another_dataset_with_a_class_map(store, tmp_path):
    """Domain shift: a C-NMC-layout model on 4-class data, its classes mapped onto the model's."""
    class_map = "class_map={Benign: hem, Early: all, Pre: all, Pro: all}"
    _, run, _ = evaluate_with(store, tmp_path, f"run_id={store['members'][0]}", "dataset=synthetic",
                              "dataset.layout=aria", *SMALL_SYNTHETIC, "dataset.reader.cells_per_subject=2",
                              "split=all", class_map)
    assert run.data.tags["dataset"] == "synthetic-aria" and run.data.tags["classes"] == "hem,all"
    assert int(run.data.params["n_samples"]) == 4 * 12 * 2
    assert "all/f1_weighted" in run.data.metrics
    assert run.data.metrics["all/ood/rejected"] >= 0.9  # the model's own gate refuses the other dataset's cells


def test_a_checkpoint_file_is_evaluated_on_the_dataset_given(store, tmp_path):
    checkpoint = next(Path(store["root"], "multirun", "0").rglob("best.ckpt"))
    cfg = compose_config("evaluate", store["root"], ["bootstrap=50", "num_workers=0", f"ckpt_path={checkpoint}",
                                                     "dataset=synthetic", *SMALL_SYNTHETIC],
                         output_dir=tmp_path / "eval")
    evaluate(cfg)
    client = store["client"]
    experiment = client.get_experiment_by_name("synthetic-cnmc")
    newest = client.search_runs([experiment.experiment_id], "tags.evaluated_kind = 'checkpoint'")[0]
    assert "mlflow.parentRunId" not in newest.data.tags and "test/f1_weighted" in newest.data.metrics


@pytest.mark.parametrize("overrides, message", [
    (["run_id=0123456789abcdef"], "No MLflow run '0123456789abcdef'"),
    ([], "Give exactly one of run_id"),
    (["split=holdout", "RUN"], "split='holdout' is not one of"),
    (["ckpt_path=/no/such.ckpt"], "does not exist"),
    (["RUN", "dataset=synthetic", "dataset.layout=aria", *SMALL_SYNTHETIC, "split=all"],
     r"class\(es\) \['Benign', 'Early', 'Pre', 'Pro'\] are not classes of the model"),
    (["RUN", "tta.views=[mirror]"], "Unknown test-time augmentation"),
    (["RUN", "bootstrap=-5"], "bootstrap=-5 is out of range: it takes a whole number of at least 0"),
    (["RUN", "batch_size=0"], "batch_size=0 is out of range"),
])
def test_refusals_are_clear_and_log_nothing(store, tmp_path, overrides, message):
    overrides = [f"run_id={store['members'][0]}" if o == "RUN" else o for o in overrides]
    client = store["client"]
    before = len(client.search_runs([store["experiment_id"]], "tags.stage = 'evaluate'"))
    with pytest.raises(AllclsError, match=message):
        evaluate(compose_config("evaluate", store["root"], overrides, output_dir=tmp_path / "eval"))
    assert len(client.search_runs([store["experiment_id"]], "tags.stage = 'evaluate'")) == before


def test_a_run_without_checkpoint_says_what_can_still_be_evaluated(store, tmp_path):
    client = store["client"]
    source = client.get_run(store["members"][0])
    run = client.create_run(store["experiment_id"], tags={**{k: source.data.tags[k] for k in
                                                             ("dataset", "classes", "split_hash")}, "stage": "train"})
    for artifact in ("config/config.yaml", "data/split_manifest.csv", "predictions/test.parquet"):
        local = client.download_artifacts(source.info.run_id, artifact, str(tmp_path / "copy"))
        client.log_artifact(run.info.run_id, local, artifact.rsplit("/", 1)[0])
    client.set_terminated(run.info.run_id, "FINISHED")
    with pytest.raises(AllclsError, match="has no checkpoints/best.ckpt.*tta.enabled=false"):
        evaluate(compose_config("evaluate", store["root"], [f"run_id={run.info.run_id}", "tta.enabled=true",
                                                            "calibration.temperature_scaling=false"],
                                output_dir=tmp_path / "eval"))


class Payload:
    """What a malicious checkpoint carries: unpickling it would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_that_are_not_weights_or_do_not_fit_are_refused_in_one_line(store, tmp_path):
    """A file holding Python objects is never unpickled and the message never suggests loading it
    unsafely; a checkpoint whose head does not fit its classes, or that is not a checkpoint at all,
    gets one line naming the file, wherever it is loaded (evaluation, serving)."""
    import torch

    from allcls.models.backbones import network_from_checkpoint
    from allcls.models.lit_classifier import LitClassifier

    marker = tmp_path / "payload-ran"
    malicious = tmp_path / "malicious.ckpt"
    torch.save({"hyper_parameters": {}, "state_dict": {}, "extra": Payload(marker)}, malicious)
    real = next(Path(store["root"], "multirun", "0").rglob("best.ckpt"))
    checkpoint = torch.load(real, weights_only=True)
    checkpoint["hyper_parameters"]["class_names"] = ["hem", "all", "other"]
    misfit = tmp_path / "misfit.ckpt"
    torch.save(checkpoint, misfit)
    garbage = tmp_path / "notes.ckpt"
    garbage.write_text("not a checkpoint")
    cases = [(malicious, "holds Python objects that are not weights, so allcls will not load it"),
             (misfit, r"its weights do not fit a custom_cnn with classes \['hem', 'all', 'other'\] \(size mismatch"),
             (garbage, "is not a readable checkpoint")]
    for path, message in cases:
        for load in (LitClassifier.from_checkpoint, network_from_checkpoint):
            with pytest.raises(AllclsError, match=message) as refused:
                load(path)
            text = str(refused.value)
            assert str(path) in text and "\n" not in text and "weights_only=False" not in text
    with pytest.raises(AllclsError, match="holds Python objects"):
        evaluate(compose_config("evaluate", store["root"], [f"ckpt_path={malicious}"], output_dir=tmp_path / "eval"))
    assert not marker.exists()
