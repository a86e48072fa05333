"""Training options one config key away (timm's train script, lightning-hydra-template's debug
group): each test shows that the option changes what it claims to change."""

import functools
from pathlib import Path

import lightning as L
import pytest
import torch

from allcls.data.datamodule import CellDataModule
from allcls.data.preparation import prepare_dataset
from allcls.data.preprocessing import InputSpec
from allcls.data.readers import CNMCReader
from allcls.data.splits import SplitSpec
from allcls.errors import AllclsError
from allcls.models.lit_classifier import LitClassifier
from allcls.models.training_options import CompiledNetwork
from allcls.predictions import read_table
from allcls.training.task import train

from helpers import FAST, SMALL_SYNTHETIC, artifacts


def only_run(client):
    experiment = client.get_experiment_by_name("synthetic-cnmc")
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def test_gradient_accumulation_takes_one_optimiser_step_per_that_many_batches(train_cfg, mlflow_client, tmp_path):
    train(train_cfg("trainer.max_epochs=1"))
    train(train_cfg("trainer.max_epochs=1", "trainer.accumulate_grad_batches=3"))
    plain, accumulated = [torch.load(tmp_path / folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
                          for folder in ("output", "output-2")]
    assert plain > 3 and accumulated == -(-plain // 3)  # ceil: the epoch's last, partial group steps too


def test_ema_weights_differ_from_the_raw_ones_and_are_the_ones_validated_and_kept(train_cfg, mlflow_client, tmp_path):
    train(train_cfg("ema=on", "callbacks.ema.decay=0.9", "trainer.max_epochs=2"))
    best = torch.load(tmp_path / "output" / "checkpoints" / "best.ckpt", weights_only=True)
    averaged, raw = best["state_dict"], best["current_model_state"]
    weight = "model.classifier.weight"
    assert not torch.allclose(averaged[weight], raw[weight])  # the average is not the last step's weights
    # The test metrics and tables come from the averaged weights: the model later stages load.
    model = LitClassifier.from_checkpoint(tmp_path / "output" / "checkpoints" / "best.ckpt")
    assert torch.equal(model.state_dict()[weight], averaged[weight])
    assert "test/f1_weighted" in only_run(mlflow_client).data.metrics


def test_debug_fdr_runs_one_batch_of_each_split(train_cfg, mlflow_client, tmp_path, inside_training):
    train(train_cfg("debug=fdr", "trainer.max_epochs=5"))
    run = only_run(mlflow_client)
    # One training batch (one optimiser step), then one validation batch: no sanity check, no second epoch.
    assert [loss.training for loss in inside_training.losses] == [True, False]
    assert inside_training.trainer.global_step == 1
    assert not (tmp_path / "output" / "checkpoints" / "best.ckpt").exists()  # one step, nothing to keep
    # The tables: every test cell, predicted by that one step's weights.
    assert run.info.status == "FINISHED" and "predictions/test.parquet" in artifacts(mlflow_client, run.info.run_id)
    table = mlflow_client.download_artifacts(run.info.run_id, "predictions/test.parquet", str(tmp_path))
    assert len(read_table(table)) == int(run.data.params["n_test"])


def test_debug_overfit_drives_the_training_loss_to_zero_on_the_same_few_batches(train_cfg, mlflow_client,
                                                                                inside_training):
    """debug=overfit as it is configured (its epochs, not the quick tests' one; 16 px images: cheaper)."""
    promised = train_cfg("debug=overfit", fast=False).trainer
    quick = [o for o in FAST if not o.startswith("trainer.max_epochs=")]
    train(train_cfg(*quick, *SMALL_SYNTHETIC, "backbone.input_size=16", "debug=overfit", fast=False))
    # The same batches every epoch, unaugmented, and both classes in them (a loss of zero is learnt,
    # not one class answered).
    batches = [p.images for p in inside_training.passes if p.training]
    count = promised.overfit_batches
    assert len(batches) == promised.max_epochs * count
    assert all(torch.equal(batch, batches[index % count]) for index, batch in enumerate(batches))
    labels = [loss.targets for loss in inside_training.losses if loss.training][:count]
    assert set(torch.cat(labels).tolist()) == {0, 1}
    run = only_run(mlflow_client)
    losses = [m.value for m in mlflow_client.get_metric_history(run.info.run_id, "train/loss_epoch")]
    assert len(losses) == promised.max_epochs and losses[-1] < 0.05, losses


def test_debug_profiler_keeps_where_the_time_went(train_cfg, mlflow_client):
    train(train_cfg("debug=profiler"))
    run = only_run(mlflow_client)
    assert "profile/fit-profile.txt" in artifacts(mlflow_client, run.info.run_id)
    report = mlflow_client.download_artifacts(run.info.run_id, "profile/fit-profile.txt")
    assert "run_training_epoch" in Path(report).read_text()


def test_layer_decay_gives_lower_layers_lower_learning_rates():
    model = LitClassifier({"name": "mobilenetv2_100"}, ["hem", "all"], layer_decay=0.5,
                          optimizer=functools.partial(torch.optim.AdamW, lr=0.01, weight_decay=0.05))
    optimizer = model.configure_optimizers()  # (with no scheduler: the optimiser alone)
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert rates[-1] == pytest.approx(0.01) and rates[0] < 0.01 * 0.5 ** 5 and len(rates) > 5
    head = {id(p) for p in model.model.get_classifier().parameters()}
    assert all(group["lr"] == pytest.approx(0.01) for group in optimizer.param_groups
               if any(id(p) in head for p in group["params"]))  # the head keeps the full rate
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.0, 0.05}  # none on biases and norms
    plain = LitClassifier({"name": "mobilenetv2_100"}, ["hem", "all"],
                          optimizer=functools.partial(torch.optim.AdamW, lr=0.01)).configure_optimizers()
    assert {group["lr"] for group in plain.param_groups} == {0.01}


def test_mixup_mixes_pairs_of_images_and_their_labels(train_cfg, mlflow_client, inside_training):
    model = LitClassifier({"name": "custom_cnn"}, ["hem", "all"], mixup={"mixup_alpha": 1.0})
    images, labels = torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    mixed, targets = model.mixup(images.clone(), labels)
    assert not torch.equal(mixed, images) and targets.shape == (8, 2)
    assert ((targets > 0) & (targets < 1)).any()  # soft labels, not one-hot
    with pytest.raises(AllclsError, match="model.mixup.alpha is not a setting"):
        LitClassifier({"name": "custom_cnn"}, ["hem", "all"], mixup={"alpha": 0.2})
    train(train_cfg("+model.mixup.mixup_alpha=0.4", "+model.mixup.cutmix_alpha=1.0"))
    assert only_run(mlflow_client).info.status == "FINISHED"
    # In training, the loss of every batch is taken against the mixed pairs' soft labels; validation's
    # against each image's own class.
    trained = [loss.targets for loss in inside_training.losses if loss.training]
    assert len(trained) > 3 and all(t.dtype == torch.float32 and t.shape == (len(t), 2) for t in trained)
    assert all(torch.allclose(t.sum(dim=1), torch.ones(len(t))) for t in trained)
    assert sum(((t > 0) & (t < 1)).any(dim=1).sum() for t in trained) > len(trained)  # pairs of two classes mixed
    validated = [loss.targets for loss in inside_training.losses if not loss.training]
    assert validated and all(t.dtype == torch.int64 and t.dim() == 1 for t in validated)


def test_channels_last_lays_out_the_weights_and_the_batches_as_nhwc(cnmc_root, tmp_path):
    module = CellDataModule(prepare_dataset(CNMCReader(cnmc_root), SplitSpec()), InputSpec(32, (0.5,) * 3, (0.5,) * 3),
                            num_workers=0, batch_size=8)
    model = LitClassifier({"name": "mobilenetv2_050"}, module.classes, channels_last=True)
    seen = []

    def look(module, inputs):  # what the network itself receives
        seen.append((inputs[0].is_contiguous(memory_format=torch.channels_last),
                     module.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)))

    model.model.register_forward_pre_hook(look)

    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=module)
    assert len(seen) == 3 and all(batch and weights for batch, weights in seen)  # 2 training batches, 1 validation


@pytest.mark.slow  # inductor compiles C++ for the network's three graphs: 45 s on 2 cores
def test_compile_trains_through_the_compiled_network_and_keeps_plain_checkpoints(train_cfg, mlflow_client, tmp_path):
    """model.compile=true: inductor compiles the network (C++ on a CPU, Triton on a GPU) and the
    steps run through it; the checkpoint holds the network's own names, so later stages load it
    plainly. With EMA too: its averaged copy of the model is not compiled, the swapped weights are."""
    torch._dynamo.reset()
    calls = []
    original = CompiledNetwork.__call__

    def counting(self, images):
        logits = original(self, images)
        calls.append(logits is not None)
        return logits

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CompiledNetwork, "__call__", counting)
        train(train_cfg("model.compile=true", "ema=on", "+trainer.limit_train_batches=2",
                        "+trainer.limit_val_batches=1"))
    assert only_run(mlflow_client).info.status == "FINISHED"
    assert len(calls) > 4 and all(calls)  # every forward pass (training, validation, tables) compiled
    checkpoint = tmp_path / "output" / "checkpoints" / "best.ckpt"
    keys = set(torch.load(checkpoint, weights_only=True)["state_dict"])
    assert keys == set(LitClassifier({"name": "custom_cnn", "input_size": 32}, ["hem", "all"]).state_dict())
    assert LitClassifier.from_checkpoint(checkpoint).compiled is None  # later stages: the plain network


def test_compile_that_cannot_compile_here_warns_once_and_trains_on(train_cfg, mlflow_client, caplog, monkeypatch):
    """No working C++ compiler (inductor's CPU backend needs one): one warning, the plain network."""
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    monkeypatch.setattr(inductor.cpp, "cxx", (None, "/no/such/g++"))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)  # a cached kernel would need no compiler
    train(train_cfg("model.compile=true", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"))
    torch._dynamo.reset()
    assert only_run(mlflow_client).info.status == "FINISHED"
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model.compile:")]
    assert len(warnings) == 1 and "No working C++ compiler" in warnings[0] and "model.compile=false" in warnings[0]
    with pytest.raises(AllclsError, match="model.compile_mode='fastest' is not a torch.compile mode"):
        LitClassifier({"name": "custom_cnn"}, ["hem", "all"], compile=True, compile_mode="fastest")
