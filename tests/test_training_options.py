"""Training options one config key away (timm's train script, lightning-hydra-template's debug
group): each test shows that the option changes what it claims to change."""

import torch

from allcls.training import train

from helpers import artifacts


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
    from allcls.models.lit_classifier import LitClassifier

    train(train_cfg("ema=on", "callbacks.ema.decay=0.9", "trainer.max_epochs=2"))
    best = torch.load(tmp_path / "output" / "checkpoints" / "best.ckpt", weights_only=True)
    averaged, raw = best["state_dict"], best["current_model_state"]
    weight = "model.classifier.weight"
    assert not torch.allclose(averaged[weight], raw[weight])  # the average is not the last step's weights
    # The test metrics and tables come from the averaged weights: the model later stages load.
    model = LitClassifier.from_checkpoint(tmp_path / "output" / "checkpoints" / "best.ckpt")
    assert torch.equal(model.state_dict()[weight], averaged[weight])
    assert "test/f1_weighted" in only_run(mlflow_client).data.metrics


def test_debug_fdr_runs_one_batch_of_each_split(train_cfg, mlflow_client, tmp_path):
    train(train_cfg("debug=fdr", "trainer.max_epochs=5"))
    run = only_run(mlflow_client)
    assert run.info.status == "FINISHED" and "predictions/test.parquet" in artifacts(mlflow_client, run.info.run_id)
    assert not (tmp_path / "output" / "checkpoints" / "best.ckpt").exists()  # one step, nothing to keep


def test_debug_overfit_drives_the_training_loss_down_on_a_few_batches(train_cfg, mlflow_client):
    train(train_cfg("debug=overfit", "trainer.max_epochs=12", "model.optimizer.lr=0.01"))
    run = only_run(mlflow_client)
    losses = [m.value for m in mlflow_client.get_metric_history(run.info.run_id, "train/loss_epoch")]
    assert len(losses) == 12 and losses[-1] < 0.3 * losses[0], losses


def test_debug_profiler_keeps_where_the_time_went(train_cfg, mlflow_client):
    train(train_cfg("debug=profiler"))
    run = only_run(mlflow_client)
    assert "profile/fit-profile.txt" in artifacts(mlflow_client, run.info.run_id)
    report = mlflow_client.download_artifacts(run.info.run_id, "profile/fit-profile.txt")
    assert "run_training_epoch" in open(report).read()
