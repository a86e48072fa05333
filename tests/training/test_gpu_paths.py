"""The paths a GPU run takes, run on the CPU: a GPU user should meet no code that never ran.
(`trainer=gpu` itself needs a GPU; here its settings run on the CPU. torch.compile: test_training_options.)"""

import albumentations as A
import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from allcls.data.datamodule import CellDataModule
from allcls.data.preparation import prepare_dataset
from allcls.data.preprocessing import InputSpec
from allcls.data.readers import CNMCReader
from allcls.data.splits import SplitSpec
from allcls.models.lit_classifier import LitClassifier
from allcls.training.best_checkpoint import predict_probabilities
from allcls.training.task import train

SPEC = InputSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_the_gpu_trainer_asks_for_bf16_and_channels_last_and_the_cpu_one_for_neither(train_cfg):
    gpu, cpu = train_cfg("trainer=gpu"), train_cfg("trainer=cpu")
    assert gpu.trainer.precision == "bf16-mixed" and gpu.model.channels_last is True
    assert train_cfg("trainer=ddp").model.channels_last is True
    assert cpu.trainer.precision == "32-true" and cpu.model.channels_last is False
    assert train_cfg("trainer=gpu", "model.channels_last=false").model.channels_last is False


def test_bf16_autocast_channels_last_and_uint8_batches_normalised_on_the_device(cnmc_root, tmp_path):
    """trainer=gpu's settings on the CPU: bf16 mixed precision (autocast), a channels-last network,
    uint8 batches augmented and normalised by the datamodule's hook after the transfer."""
    module = CellDataModule(prepare_dataset(CNMCReader(cnmc_root), SplitSpec()), SPEC, num_workers=0, batch_size=8,
                            augmentations=[A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)])
    model = LitClassifier({"name": "mobilenetv2_050"}, module.classes, channels_last=True)
    seen = []

    def look(network, inputs, output):
        seen.append((inputs[0].dtype, inputs[0].is_contiguous(memory_format=torch.channels_last), output.dtype,
                     torch.is_autocast_enabled("cpu")))

    model.model.register_forward_hook(look)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
                        precision="bf16-mixed", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=module)
    assert len(seen) == 3  # 2 training batches, 1 validation
    assert all(entry == (torch.float32, True, torch.bfloat16, True) for entry in seen), seen
    assert trainer.precision_plugin.__class__.__name__ == "MixedPrecision"
    assert not module.train_dataloader().pin_memory  # batches go to the CPU: nothing to pin
    # The tables' pass outside the Trainer: the same hook turns the loader's uint8 into the network's input.
    probabilities = predict_probabilities(model, module.eval_dataloader("test"), "cpu", model_input=module.model_input)
    assert probabilities.shape == (len(module.split_dataset("test")), 2)
    assert np.allclose(probabilities.sum(axis=1), 1)


def test_a_bf16_channels_last_run_trains_under_autocast_in_nhwc_and_finishes_with_its_tables(train_cfg, mlflow_client,
                                                                                            inside_training):
    train(train_cfg("trainer.precision=bf16-mixed", "model.channels_last=true", "+trainer.limit_train_batches=2"))
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("synthetic-cnmc").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["precision"] == "bf16-mixed"
    assert "test/f1_weighted" in run.data.metrics
    trainer = inside_training.trainer
    assert isinstance(trainer.precision_plugin, MixedPrecision) and trainer.precision_plugin.precision == "bf16-mixed"
    network = trainer.lightning_module.model
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in network.parameters() if p.dim() == 4)
    # Both training steps, and validation, under the CPU's autocast: float32 NHWC batches in, bf16 logits
    # out. Every pass (the tables' too, outside the Trainer) gets its batch in NHWC.
    passes = inside_training.passes
    assert [p.autocast for p in passes if p.training] == [True, True]
    assert any(p.autocast for p in passes if not p.training)
    assert all(p.images.dtype == torch.float32 and p.logits.dtype == torch.bfloat16 for p in passes if p.autocast)
    assert all(p.images.is_contiguous(memory_format=torch.channels_last) for p in passes)
