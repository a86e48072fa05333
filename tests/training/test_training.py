"""The training task end to end on synthetic data: what it logs to MLflow, that it learns, how it fails."""

import json
import shutil
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from allcls.data.datamodule import CellDataModule
from allcls.data.preparation import prepare_dataset
from allcls.data.preprocessing import InputSpec
from allcls.data.readers import CNMCReader
from allcls.data.splits import SplitSpec
from allcls.errors import AllclsError
from allcls.models.lit_classifier import LitClassifier
from allcls.predictions import read_table
from allcls.training.task import train

from helpers import PROJECT, SMALL_SYNTHETIC, artifacts


def only_run(client, experiment="synthetic-cnmc"):
    experiment = client.get_experiment_by_name(experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]



def test_one_epoch_run_leaves_everything_later_stages_need(train_cfg, mlflow_client, tmp_path):
    cfg = train_cfg()
    score = train(cfg)
    run = only_run(mlflow_client)
    assert run.info.status == "FINISHED"
    assert score == pytest.approx(run.data.metrics["val/f1_weighted_best"])

    tags = run.data.tags
    assert tags["dataset"] == "synthetic-cnmc" and tags["classes"] == "hem,all" and tags["backbone"] == "custom_cnn"
    assert len(tags["split_hash"]) == 16 and tags["sweep_id"] and tags["git_commit"]
    params = run.data.params
    assert params["backbone"] == "custom_cnn" and params["input_size"] == "32" and params["optimizer"] == "AdamW"
    assert int(params["n_train"]) > 0 and params["augmentation"] == "basic"
    assert params["input_pipeline"] == "batch" and params["packed_cache"] == "False"  # basic has a batch form
    for metric in ("train/loss_epoch", "val/f1_weighted", "val/kappa", "val/auroc", "val/recall_hem",
                   "test/f1_weighted", "test/balanced_accuracy", "test/precision_all"):
        assert metric in run.data.metrics, metric

    found = artifacts(mlflow_client, run.info.run_id)
    for name in ("config/config.yaml", "config/overrides.yaml", "data/split_manifest.csv", "checkpoints/best.ckpt",
                 "predictions/val.parquet", "predictions/test.parquet", "confusion_matrix/test.csv"):
        assert name in found, name

    local = Path(mlflow_client.download_artifacts(run.info.run_id, "", str(tmp_path / "download")))
    # Its header names every column, the rows' too: the MLflow UI's preview shows which row is which true class.
    header = (local / "confusion_matrix" / "test.csv").read_text().splitlines()[0]
    assert header == "true \\ predicted,pred_hem,pred_all", header
    manifest = pd.read_csv(local / "data" / "split_manifest.csv")
    for split in ("val", "test"):
        table = read_table(local / "predictions" / f"{split}.parquet", ["hem", "all"])  # validates the schema
        assert list(table.columns) == ["sample_id", "subject", "label", "prob_hem", "prob_all"]
        expected = manifest.query("split == @split")
        assert sorted(table["sample_id"]) == sorted(expected["sample_id"])  # every sample, exactly once
        assert (table[["prob_hem", "prob_all"]].sum(axis=1) - 1).abs().max() < 1e-6
        labels = expected.set_index("sample_id")["label"].map({"hem": 0, "all": 1})
        assert (table.set_index("sample_id")["label"] == labels.loc[table["sample_id"]]).all()
        assert table["subject"].notna().all()
    # The checkpoint holds only data: it loads with weights_only=True and rebuilds the model.
    model = LitClassifier.from_checkpoint(local / "checkpoints" / "best.ckpt")
    assert model.class_names == ["hem", "all"]


def test_short_training_learns_far_better_than_chance(train_cfg, mlflow_client):
    """A pipeline that learns nothing (labels shuffled, inputs broken, wrong checkpoint) fails here."""
    train(train_cfg("trainer.max_epochs=10", "callbacks.early_stopping=null"))
    metrics = only_run(mlflow_client).data.metrics
    assert metrics["test/auroc"] > 0.85
    assert metrics["test/balanced_accuracy"] > 0.70


def test_the_same_seed_trains_the_same_model(train_cfg, mlflow_client, tmp_path):
    """Augmentations (albumentations keeps its own random stream) and loader workers follow the seed."""
    overrides = ("augmentation=strong", "data.num_workers=2", "trainer.max_epochs=2", "callbacks.early_stopping=null",
                 *SMALL_SYNTHETIC)
    train(train_cfg(*overrides))
    train(train_cfg(*overrides))
    train(train_cfg(*overrides, "seed=1"))
    experiment = mlflow_client.get_experiment_by_name("synthetic-cnmc")
    runs = mlflow_client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    losses = [run.data.metrics["train/loss_epoch"] for run in runs]
    tables = [read_table(mlflow_client.download_artifacts(run.info.run_id, "predictions/test.parquet",
                                                          str(tmp_path / run.info.run_id))) for run in runs]
    assert losses[0] == losses[1] != losses[2]
    assert tables[0].equals(tables[1]) and not tables[0].equals(tables[2])


def test_runs_of_the_same_split_share_its_hash(train_cfg, mlflow_client):
    train(train_cfg("seed=1", *SMALL_SYNTHETIC))
    train(train_cfg("seed=2", *SMALL_SYNTHETIC))
    experiment = mlflow_client.get_experiment_by_name("synthetic-cnmc")
    hashes = {r.data.tags["split_hash"] for r in mlflow_client.search_runs([experiment.experiment_id])}
    assert len(hashes) == 1


def test_a_job_that_fails_marks_its_run_failed(train_cfg, mlflow_client):
    # StepLR needs a step_size: the scheduler fails inside fit, after the run was created.
    cfg = train_cfg("model.scheduler._target_=torch.optim.lr_scheduler.StepLR", "~model.scheduler.T_max")
    with pytest.raises(TypeError):
        train(cfg)
    run = only_run(mlflow_client)
    assert run.info.status == "FAILED"
    assert "step_size" in run.data.tags["error"]


def test_a_job_run_again_into_a_used_folder_is_refused_and_changes_nothing(tmp_path, mlflow_client):
    """A fixed hydra.run.dir used twice: the second job must not overwrite the first one's
    checkpoint and tables (Lightning would have saved best-v1.ckpt beside them), nor log a run."""
    from helpers import compose_train

    folder = tmp_path / "fixed"
    train(compose_train(tmp_path, [], output_dir=folder))
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.suffix in (".ckpt", ".parquet")}
    assert {p.name for p in before} >= {"best.ckpt", "val.parquet", "test.parquet"}
    with pytest.raises(AllclsError, match=r"already holds another job's files \(checkpoints/best.ckpt"):
        train(compose_train(tmp_path, ["seed=3"], output_dir=folder))
    assert {p: p.read_bytes() for p in before} == before and not list(folder.rglob("best-v*.ckpt"))
    assert len(mlflow_client.search_runs([mlflow_client.get_experiment_by_name("synthetic-cnmc").experiment_id])) == 1


@pytest.mark.parametrize("overrides, message", [
    (["dataset=cnmc"], "dataset.root is not set"),
    (["dataset=cnmc", "dataset.root=/no/such/place"], "does not exist"),
    (["backbone.name=mobilenetv9"], "Unknown backbone 'mobilenetv9'.*Did you mean"),
    (["monitor=val/f2"], "monitor='val/f2' is not a validation metric"),
    (["data.imbalance=smote"], "data.imbalance='smote'"),
    (["dataset.classes=[normal,blast]"], "no folder for class"),
    (["+backbone.dropout=0.3"], r"backbone.dropout is not a setting \(did you mean backbone.drop_rate\?\)"),
    (["+dataset.split.val_frac=0.3"], r"dataset.split.val_frac is not a setting \(did you mean"),
    (["monitor=val/loss", "monitor_mode=max"], "monitor_mode='max' is the wrong way round for val/loss"),
    (["data.batch_size=0"], r"data.batch_size=0 is out of range: it takes a whole number of at least 1"),
    (["trainer.max_epochs=0"], r"trainer.max_epochs=0 is out of range"),
    (["model.optimizer.lr=-0.1"], r"model.optimizer.lr=-0.1 is out of range: it takes a number above 0"),
    (["data.num_workers=-2"], r"data.num_workers=-2 is out of range: it takes null or a whole number of at least 0"),
    (["backbone.drop_rate=1.5"], r"backbone.drop_rate=1.5 is out of range"),
    (["model.label_smoothing=1"], r"model.label_smoothing=1 is out of range"),
    (["data.batch_size=true"], r"data.batch_size=True is out of range"),
    (["dataset.split.val_fraction=0.6", "dataset.split.test_fraction=0.5"], "leaves nothing to train on"),
    (["dataset.classes=[hem,hem]"], r"dataset.classes=\['hem', 'hem'\] must name at least two different classes"),
    (["model.layer_decay=1.5"], r"model.layer_decay=1.5 is out of range: it takes null or a number above 0"),
    (["ema=on", "callbacks.ema.decay=0"], r"callbacks.ema.decay=0 is out of range"),
    (["augmentation.transforms.0.p=2"], r"augmentation.transforms\[0\] \(albumentations.HorizontalFlip\) refuses its "
                                        r"settings: .*less than or equal to 1"),
    (["augmentation=strong", "augmentation.transforms.4.brightness=-1"], r"augmentation.transforms\[4\] "
                                                                   r"\(albumentations.ColorJitter\) refuses"),
    (["data.pipeline=gpu"], r"data.pipeline='gpu' is not a pipeline: use one of \['auto', 'batch', 'per_sample'\]"),
    (["augmentation=strong", "data.pipeline=batch"], r"data.pipeline=batch cannot apply Affine, ColorJitter, "
                                                     r"GaussianBlur per batch .* use data.pipeline=auto"),
    ([f"data.cache_dir={PROJECT / 'pyproject.toml' / 'cache'}"], r"data.cache_dir=.*cannot be a folder: .* is a file"),
])
def test_bad_input_stops_with_a_clear_message_before_any_run(train_cfg, tmp_path, overrides, message):
    with pytest.raises(AllclsError, match=message):
        train(train_cfg(*overrides))
    store = tmp_path / "mlruns" / "mlflow.db"  # a store is opened only when it is there (creating one takes a second)
    if store.exists():
        client = MlflowClient(f"sqlite:///{store}")
        experiment = client.get_experiment_by_name("synthetic-cnmc")
        assert experiment is None or not client.search_runs([experiment.experiment_id])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_without_a_gpu_fails_clearly_and_marks_the_run(train_cfg, mlflow_client):
    with pytest.raises(AllclsError, match="cannot run on this machine.*trainer=cpu"):
        train(train_cfg("trainer=gpu"))
    assert only_run(mlflow_client).info.status == "FAILED"


def test_wrong_layout_for_the_dataset_is_refused(train_cfg, cnmc_root):
    with pytest.raises(AllclsError, match="not an ALL image dataset root"):
        train(train_cfg("dataset=aria", f"dataset.root={cnmc_root}"))


def test_real_dataset_configs_train_on_their_layouts(train_cfg, mlflow_client, cnmc_root, aria_root, tmp_path):
    """The C-NMC copy holds one image that cannot be read: skip_unreadable_images=true leaves it out
    and the run lists it, with the reason, in data/unreadable_images.txt."""
    root = Path(shutil.copytree(cnmc_root, tmp_path / "cnmc"))
    broken = next((root / "training_data" / "fold_0" / "all").glob("*.bmp"))
    broken.write_bytes(b"")
    train(train_cfg("dataset=cnmc", f"dataset.root={root}", "dataset.skip_unreadable_images=true"))
    run = only_run(mlflow_client, "cnmc")
    assert run.data.tags["classes"] == "hem,all"
    listed = mlflow_client.download_artifacts(run.info.run_id, "data/unreadable_images.txt", str(tmp_path / "dl"))
    ((path, reason),) = [line.split("\t") for line in Path(listed).read_text().splitlines()]
    assert path == str(broken) and "empty" in reason
    train(train_cfg("dataset=aria", f"dataset.root={aria_root}", "dataset.variant=Segmented"))
    assert only_run(mlflow_client, "aria").data.tags["classes"] == "Benign,Early,Pre,Pro"


def test_two_phase_transfer_learning_freezes_then_unfreezes_at_a_lower_rate(cnmc_root, tmp_path):
    """Epoch 0 trains only the head; from epoch 1 every layer trains, at lr x unfreeze_lr_factor."""
    hints = {"fold_0": "train", "fold_1": "train", "fold_2": "val", "prelim_test": "test"}
    module = CellDataModule(prepare_dataset(CNMCReader(cnmc_root), SplitSpec(hints=hints)),
                            InputSpec(32, (0.5,) * 3, (0.5,) * 3), num_workers=0, batch_size=16)
    optimizer = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    model = LitClassifier({"name": "custom_cnn"}, module.classes, optimizer=optimizer,
                          freeze_backbone_epochs=1, unfreeze_lr_factor=0.1)
    snapshots = []

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append({k: v.clone() for k, v in pl_module.model.state_dict().items()})
            snapshots[-1]["lr"] = trainer.optimizers[0].param_groups[0]["lr"]

    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[Snapshot()], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=module)
    conv, bn_mean, head = "features.0.weight", "features.1.running_mean", "classifier.weight"
    assert torch.equal(snapshots[0][conv], before[conv])          # frozen backbone in epoch 0...
    assert torch.equal(snapshots[0][bn_mean], before[bn_mean])    # ...batch-norm statistics too
    assert not torch.equal(snapshots[0][head], before[head])      # the head learns
    assert not torch.equal(snapshots[1][conv], snapshots[0][conv])  # epoch 1: everything learns
    assert snapshots[0]["lr"] == pytest.approx(0.1) and snapshots[1]["lr"] == pytest.approx(0.01)


def test_the_mlflow_ui_says_what_each_run_saw_and_where_it_came_from(train_cfg, mlflow_client):
    """The runs table's Dataset column (one input per split, the split hash as digest, the data
    folder as source), the run page's Source field, and the learning rate named like the rest."""
    train(train_cfg("trainer.max_epochs=2"))
    run = only_run(mlflow_client)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    dataset = run.data.tags["dataset"]
    assert set(inputs) == {f"{dataset}/train", f"{dataset}/val", f"{dataset}/test"}
    for split, given in inputs.items():
        assert given.dataset.digest == run.data.tags["split_hash"] and given.dataset.source_type == "local"
        assert {t.key: t.value for t in given.tags}["mlflow.data.context"] == split.rsplit("/", 1)[1]
        assert json.loads(given.dataset.profile)["images"] > 0
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.source.name"]
    assert "train/lr" in run.data.metrics and not [m for m in run.data.metrics if m.startswith("lr-")]
