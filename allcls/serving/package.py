"""Package a training or ensemble run as an MLflow pyfunc model, optionally registered:

    allcls-package run_id=<run> [register_as=<name>] [alias=champion]

The model (allcls.packaged_model) is logged into the run as `model/`, with its model card
(allcls.model_card). The temperature and the referral rule are fitted on the run's logged
validation predictions; the card's numbers come from its logged test predictions. Nothing is
retrained or predicted again.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from omegaconf import DictConfig

from allcls.config.ranges import PACKAGE, check_ranges
from allcls.errors import AllclsError
from allcls.evaluation.sources import ModelSource, resolve_source
from allcls.inference import conformal
from allcls.inference.calibration import apply_temperature, fit_temperature
from allcls.metrics.bootstrap import bootstrap_multiplicities, metric_table, percentile_interval, resampling_groups
from allcls.models.backbones import BackboneSpec, input_spec
from allcls.models.checkpoints import read_checkpoint
from allcls.predictions import probabilities_of
from allcls.serving.model_card import CardFacts, markdown
from allcls.serving.pyfunc_model import SPEC_FILE, MemberSpec, ModelSpec
from allcls.tracking import schema as run_schema
from allcls.tracking.store import browse_command, is_local_store, ui_view
from allcls.tracking.tracker import MissingArtifact, Tracker

log = logging.getLogger(__name__)

MODEL_PATH = "model"
PYFUNC_FILE = Path(__file__).with_name("model_code.py")  # models-from-code: the model is built, not unpickled
CARD_FILE = "model_card.md"
HEADLINE_SCORES = ("balanced_accuracy", "f1_weighted", "auroc", "kappa")  # carried in the spec for the page
# The smallest valid PNG (one black pixel): an input example the MLflow UI can show.
EXAMPLE_IMAGE = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")


def package(cfg: DictConfig) -> str:
    """Log the run's model (and register it, when asked); return its model URI."""
    check_ranges(cfg, PACKAGE)
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)  # the registry calls below use MLflow's global store
    with tempfile.TemporaryDirectory(prefix="allcls-package-") as folder:
        workdir = Path(folder)
        tracker = Tracker(cfg.logger.tracking_uri, cfg.experiment_name or "", cfg.logger.artifact_location)
        run_id = tracker.latest_run_id(run_schema.ENSEMBLE) if cfg.run_id == "latest" else cfg.run_id
        source = resolve_source(tracker, run_id, None, workdir)
        run_id = source.run_id
        if tracker.has_artifact(run_id, f"{MODEL_PATH}/MLmodel") and not cfg.overwrite:
            raise AllclsError(f"Run {run_id} already holds a packaged model ({MODEL_PATH}/): pass overwrite=true "
                              "to replace it, or register the one it has.")
        spec, artifacts, facts = build(tracker, source, cfg, workdir)
        saved = workdir / MODEL_PATH
        mlflow.pyfunc.save_model(str(saved), python_model=str(PYFUNC_FILE), artifacts=artifacts,
                                 signature=signature(spec), input_example=pd.DataFrame({"image": [EXAMPLE_IMAGE]}))
        card = markdown(facts)
        (saved / CARD_FILE).write_text(card)
        tracker.client.log_artifacts(run_id, str(saved), MODEL_PATH)
        uri = f"runs:/{run_id}/{MODEL_PATH}"
        print(f"Packaged {source.name} as {uri} ({len(spec.members)} member(s), temperature "
              f"{'none' if spec.temperature is None else f'{spec.temperature:.3f}'}, referral "
              f"{'none' if spec.threshold is None else f'{spec.coverage:.0%} coverage'}).", flush=True)
        page = ui_view(tracker.tracking_uri, tracker.client.get_run(run_id).info.experiment_id, run_id)
        if cfg.register_as:
            uri, version = register(tracker, uri, cfg.register_as, cfg.alias, spec, card)
            page = f"{ui_view(tracker.tracking_uri)}/#/models/{cfg.register_as}/versions/{version}"
    print(f"Browse (the model card is on the model's page): {browse_command(tracker.tracking_uri)}, then open {page}"
          if is_local_store(tracker.tracking_uri) else f"Browse (the model card is on the model's page): {page}",
          flush=True)
    return uri


def build(tracker: Tracker, source: ModelSource, cfg: DictConfig, workdir: Path
          ) -> tuple[ModelSpec, dict[str, str], CardFacts]:
    """The model's spec, its artifact files and the facts of its card."""
    validation = source.logged_table(tracker, "val", workdir)
    test = source.logged_table(tracker, "test", workdir)
    if validation is None or test is None:
        raise AllclsError(f"Run {source.run_id} has no predictions/val.parquet or test.parquet: package a training "
                          "or ensemble run that finished.")
    temperature = fit_temperature(probabilities_of(validation), validation["label"].to_numpy())
    scale = (lambda p: p) if temperature is None else (lambda p: apply_temperature(p, temperature))
    threshold = conformal.fit_threshold(scale(probabilities_of(validation)), validation["label"].to_numpy(),
                                        validation["subject"].tolist(), float(cfg.coverage))
    if threshold is None:
        log.warning("The validation split has too few subjects for %.0f%% coverage: the model gets no referral rule.",
                    100 * cfg.coverage)
    artifacts, members, backbones = {}, [], []
    for index, member in enumerate(source.members):
        key = f"member_{index}"
        try:
            artifacts[key] = str(tracker.download(member.run_id, "checkpoints/best.ckpt", workdir / key))
        except MissingArtifact:
            raise AllclsError(f"Run {member.name} ({member.run_id}) has no checkpoints/best.ckpt to package.") from None
        backbone = BackboneSpec.of(read_checkpoint(artifacts[key])["hyper_parameters"]["backbone"])
        spec = input_spec(backbone)
        members.append(MemberSpec(member.name, member.weight, key, spec.size, spec.mean, spec.std,
                                  bool(member.train_config.dataset.roi_crop), backbone.name))
        backbones.append(backbone.name)
    tags = source.tags
    scores = metric_table(probabilities_of(test), test["label"].to_numpy(), test["subject"].tolist(), source.classes,
                          int(cfg.bootstrap), int(cfg.seed))
    model = ModelSpec(source.classes, source.rule, members, temperature, float(cfg.coverage) if threshold else None,
                      threshold, {"run_id": source.run_id, "kind": source.kind, "dataset": tags.get("dataset", ""),
                                  "classes": ",".join(source.classes), "split_hash": tags.get("split_hash", "")},
                      {row.metric: [float(row.value), float(row.ci_low), float(row.ci_high)]
                       for row in scores.itertuples() if row.metric in HEADLINE_SCORES})
    spec_file = workdir / SPEC_FILE
    spec_file.write_text(model.to_json())
    artifacts["spec"] = str(spec_file)
    facts = CardFacts(cfg.register_as or source.name, model, backbones, split_type(source, test), scores,
                      (len(test), int(test["subject"].nunique())), calibration_facts(test, temperature),
                      referral_facts(test, scale, threshold, int(cfg.bootstrap), int(cfg.seed)))
    return model, artifacts, facts


def split_type(source: ModelSource, test: pd.DataFrame) -> str:
    split = source.members[0].train_config.dataset.split
    if split.get("by") == "image":
        return "by image (LEAKY: cells of one patient in train and test alike)"
    if test["subject"].isna().all():
        return "by content (the dataset has no patient ids: identical images kept together, a patient's cells may " \
               "be on both sides)"
    return "by subject (no patient's cells on two sides)"


def calibration_facts(test: pd.DataFrame, temperature: float | None) -> dict[str, tuple[float, float]]:
    if temperature is None:
        return {}
    probabilities, labels, subjects = probabilities_of(test), test["label"].to_numpy(), test["subject"].tolist()
    classes = [c.removeprefix("prob_") for c in test.columns if c.startswith("prob_")]
    before = metric_table(probabilities, labels, subjects, classes, 0, 0).set_index("metric")["value"]
    after = metric_table(apply_temperature(probabilities, temperature), labels, subjects, classes, 0, 0) \
        .set_index("metric")["value"]
    return {name: (float(before[name]), float(after[name])) for name in ("ece", "log_loss")}


def referral_facts(test: pd.DataFrame, scale, threshold: float | None, replicates: int, seed: int):
    if threshold is None:
        return None
    labels = test["label"].to_numpy()
    members = conformal.prediction_sets(scale(probabilities_of(test)), threshold)
    covered = members[np.arange(len(labels)), labels].astype(np.float64)
    draws = bootstrap_multiplicities(resampling_groups(test["subject"].tolist()), replicates, seed)
    low, high = percentile_interval(draws @ covered / draws.sum(axis=1) if replicates else None)
    sizes = members.sum(axis=1)
    return float(covered.mean()), low, high, float(sizes.mean()), float((sizes > 1).mean())


def signature(spec: ModelSpec) -> ModelSignature:
    inputs = Schema([ColSpec("string", "image", required=False), ColSpec("string", "path", required=False)])
    outputs = [ColSpec("string", "label"), *[ColSpec("double", f"prob_{c}") for c in spec.classes],
               ColSpec("string", "set"), ColSpec("boolean", "refer")]
    if len(spec.members) > 1:
        outputs += [ColSpec("string", spec.member_column(m)) for m in spec.members]
    outputs.append(ColSpec("string", "error"))
    return ModelSignature(inputs=inputs, outputs=Schema(outputs), params=ParamSchema([ParamSpec("tta", "boolean",
                                                                                                False)]))


def register(tracker: Tracker, uri: str, name: str, alias: str | None, spec: ModelSpec, card: str) -> tuple[str, str]:
    """Register the logged model; tag the version with where it came from and the run with the
    version; the card is the version's description. Returns models:/<name>@<alias> (or /<version>)
    and the version."""
    try:
        version = mlflow.register_model(uri, name, tags={"run_id": spec.source["run_id"],
                                                         "dataset": spec.source["dataset"],
                                                         "classes": spec.source["classes"],
                                                         "split_hash": spec.source["split_hash"]}).version
    except MlflowException as error:
        raise AllclsError(f"Could not register the model as {name!r}: {error.message}") from None
    client = tracker.client
    client.update_model_version(name, version, description=card)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    client.set_tag(spec.source["run_id"], "registered_model_version", f"{name}/{version}")
    registered = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    print(f"Registered as {name} version {version}" + (f", alias {alias}" if alias else "")
          + f": load it with mlflow.pyfunc.load_model('{registered}') or serve it with `mlflow models serve -m "
          f"{registered} --env-manager local`, MLFLOW_TRACKING_URI={tracker.tracking_uri} set.", flush=True)
    return registered, version
