"""Package a training or ensemble run as an MLflow pyfunc model, optionally registered:

    allcls-package run_id=<run> [register_as=<name>] [alias=champion]

The model (allcls.serving.pyfunc_model) is logged into the run as `model/`, with its model card
(allcls.serving.model_card). The temperature and the referral rule are fitted on the run's logged
validation predictions; the card's numbers come from its logged test predictions. Nothing is
retrained or predicted again.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from allcls.errors import AllclsError
from allcls.evaluation.sources import ModelSource, resolve_source
from allcls.inference import conformal
from allcls.inference.calibration import calibrated, fit_temperature
from allcls.inference.spec import SPEC_FILE, ModelSpec
from allcls.metrics.bootstrap import metric_table
from allcls.metrics.names import CALIBRATION, HEADLINE
from allcls.predictions import class_names_of, probabilities_of
from allcls.serving.model_card import CardFacts, markdown
from allcls.serving.settings import PackageSettings, Referral
from allcls.tracking import registry
from allcls.tracking import schema as run_schema
from allcls.tracking.registry import MODEL_PATH
from allcls.tracking.store import browse_command, is_local_store, ui_view
from allcls.tracking.tracker import Tracker

log = logging.getLogger(__name__)

PYFUNC_FILE = Path(__file__).with_name("model_code.py")  # models-from-code: the model is built, not unpickled
CARD_FILE = "model_card.md"
# The smallest valid PNG (one black pixel): an input example the MLflow UI can show.
EXAMPLE_IMAGE = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")


def package(cfg: DictConfig) -> str:
    """Log the run's model (and register it, when asked); return its model URI."""
    settings = PackageSettings.of(cfg)
    with tempfile.TemporaryDirectory(prefix="allcls-package-") as folder:
        workdir = Path(folder)
        tracker = Tracker(settings.store.tracking_uri, settings.store.artifact_location)
        run_id = settings.run_id
        if run_id == "latest":
            run_id = tracker.latest_run_id(tracker.experiment(settings.experiment_name or ""), run_schema.ENSEMBLE)
        source = resolve_source(tracker, run_id, None, workdir)
        assert source.run_id is not None  # resolved from a run id, not a checkpoint file
        run_id = source.run_id
        if tracker.has_artifact(run_id, f"{MODEL_PATH}/MLmodel") and not settings.overwrite:
            raise AllclsError(f"Run {run_id} already holds a packaged model ({MODEL_PATH}/): pass overwrite=true "
                              "to replace it, or register the one it has.")
        spec, artifacts, facts = build(tracker, source, settings.referral, settings.register_as or source.name,
                                       workdir)
        saved = workdir / MODEL_PATH
        save_model(spec, artifacts, saved)
        card = markdown(facts)
        (saved / CARD_FILE).write_text(card)
        tracker.run(run_id).log_folder(saved, MODEL_PATH)
        uri = f"runs:/{run_id}/{MODEL_PATH}"
        print(f"Packaged {source.name} as {uri} ({len(spec.members)} member(s), temperature "
              f"{'none' if spec.temperature is None else f'{spec.temperature:.3f}'}, referral "
              f"{'none' if spec.threshold is None else f'{spec.coverage:.0%} coverage'}).", flush=True)
        page = ui_view(tracker.tracking_uri, source.experiment_id, run_id)
        if settings.register_as:
            uri, version = register(tracker, run_id, settings.register_as, settings.alias, spec, card)
            page = f"{ui_view(tracker.tracking_uri)}/#/models/{settings.register_as}/versions/{version}"
    print(f"Browse (the model card is on the model's page): {browse_command(tracker.tracking_uri)}, then open {page}"
          if is_local_store(tracker.tracking_uri) else f"Browse (the model card is on the model's page): {page}",
          flush=True)
    return uri


def build(tracker: Tracker, source: ModelSource, referral: Referral, name: str, workdir: Path
          ) -> tuple[ModelSpec, dict[str, str], CardFacts]:
    """The model's spec, its artifact files and the facts of its card (`name`: the model's)."""
    validation = source.logged_table(tracker, "val", workdir)
    test = source.logged_table(tracker, "test", workdir)
    if validation is None or test is None:
        raise AllclsError(f"Run {source.run_id} has no predictions/val.parquet or test.parquet: package a training "
                          "or ensemble run that finished.")
    temperature = fit_temperature(probabilities_of(validation), validation["label"].to_numpy())
    threshold = conformal.fit_threshold(calibrated(probabilities_of(validation), temperature),
                                        validation["label"].to_numpy(), validation["subject"].tolist(),
                                        referral.coverage)
    if threshold is None:
        log.warning("The validation split has too few subjects for %.0f%% coverage: the model gets no referral rule.",
                    100 * referral.coverage)
    artifacts = {ModelSpec.checkpoint_key(index): str(source.checkpoint(index, tracker, workdir, "nothing to package"))
                 for index in range(len(source.members))}
    tags = source.tags
    scores = metric_table(probabilities_of(test), test["label"].to_numpy(), test["subject"].tolist(), source.classes,
                          referral.bootstrap, referral.seed)
    model = ModelSpec(source.classes, source.rule, source.members, temperature,
                      referral.coverage if threshold else None, threshold,
                      {"run_id": source.run_id or "", "kind": source.kind, "dataset": tags.get("dataset", ""),
                       "classes": ",".join(source.classes), "split_hash": tags.get("split_hash", "")},
                      {row.metric: [float(row.value), float(row.ci_low), float(row.ci_high)]
                       for row in scores.itertuples() if row.metric in HEADLINE})
    spec_file = workdir / SPEC_FILE
    spec_file.write_text(model.to_json())
    artifacts["spec"] = str(spec_file)
    facts = CardFacts(name, model, split_type(source, test), scores,
                      (len(test), int(test["subject"].nunique())), calibration_facts(test, temperature),
                      referral_facts(test, temperature, threshold, referral.bootstrap, referral.seed))
    return model, artifacts, facts


def split_type(source: ModelSource, test: pd.DataFrame) -> str:
    if source.split_by == "image":
        return "by image (LEAKY: cells of one patient in train and test alike)"
    if test["subject"].isna().all():
        return "by content (the dataset has no patient ids: identical images kept together, a patient's cells may " \
               "be on both sides)"
    return "by subject (no patient's cells on two sides)"


def calibration_facts(test: pd.DataFrame, temperature: float | None) -> dict[str, tuple[float, float]]:
    if temperature is None:
        return {}
    probabilities, labels, subjects = probabilities_of(test), test["label"].to_numpy(), test["subject"].tolist()
    classes = class_names_of(test)
    before = metric_table(probabilities, labels, subjects, classes, 0, 0).set_index("metric")["value"]
    after = metric_table(calibrated(probabilities, temperature), labels, subjects, classes, 0, 0) \
        .set_index("metric")["value"]
    return {name: (float(before[name]), float(after[name])) for name in CALIBRATION}


def referral_facts(test: pd.DataFrame, temperature: float | None, threshold: float | None, replicates: int,
                   seed: int) -> conformal.SetMeasures | None:
    """What the referral rule's sets measure on test."""
    if threshold is None:
        return None
    members = conformal.prediction_sets(calibrated(probabilities_of(test), temperature), threshold)
    return conformal.measure_sets(members, test["label"].to_numpy(), test["subject"].tolist(), replicates, seed)


def save_model(spec: ModelSpec, artifacts: dict[str, str], folder: Path) -> None:
    """The pyfunc model folder: the spec and checkpoints, the code that builds the model, and the
    columns it answers with (allcls.inference.model)."""
    outputs = [("label", "string"), *[(f"prob_{c}", "double") for c in spec.classes], ("set", "string"),
               ("refer", "boolean")]
    if len(spec.members) > 1:
        outputs += [(spec.member_column(m), "string") for m in spec.members]
    outputs.append(("error", "string"))
    registry.save(folder, PYFUNC_FILE, artifacts, inputs=[("image", "string"), ("path", "string")], outputs=outputs,
                  params={"tta": False}, input_example=pd.DataFrame({"image": [EXAMPLE_IMAGE]}))


def register(tracker: Tracker, run_id: str, name: str, alias: str | None, spec: ModelSpec, card: str
             ) -> tuple[str, str]:
    """Register the run's logged model, its version tagged with where it came from and described by
    its card. Returns models:/<name>@<alias> (or /<version>) and the version."""
    tags = {key: spec.source[key] for key in ("run_id", "dataset", "classes", "split_hash")}
    version = registry.register(tracker, run_id, name, alias, tags, card)
    registered = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    print(f"Registered as {name} version {version}" + (f", alias {alias}" if alias else "")
          + f": load it with mlflow.pyfunc.load_model('{registered}') or serve it with `mlflow models serve -m "
          f"{registered} --env-manager local`, MLFLOW_TRACKING_URI={tracker.tracking_uri} set.", flush=True)
    return registered, version
