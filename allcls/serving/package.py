"""Package a training or ensemble run as an MLflow pyfunc model, optionally registered:

    allcls-package run_id=<run> [register_as=<name>] [alias=champion]

The model (allcls.serving.pyfunc_model) is logged into the run as `model/`, with its model card
(allcls.serving.model_card). Its decision rule (temperature, prediction sets, protected miss rate,
out-of-distribution gate, patient rule) is fitted on the run's own images, predicted through the
networks exactly as the served model predicts (the gate's statistics on the training split, the
rest on validation); the card's test metrics are the ones the run logged, its figures on the rule
are measured on the test split. Nothing is retrained.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from allcls.errors import AllclsError
from allcls.evaluation.decision_measures import measure, probe_figures
from allcls.evaluation.plots import reliability_diagram
from allcls.evaluation.safeguards import SplitOutputs, fit_rule, split_outputs, train_sample
from allcls.evaluation.settings import RuleSettings
from allcls.evaluation.sources import ModelSource, resolve_source
from allcls.evaluation.targets import OwnData, predictor_for
from allcls.inference.calibration import calibrated, fit_temperature
from allcls.inference.model import output_columns
from allcls.inference.spec import OOD_KEY, SPEC_FILE, ModelSpec
from allcls.metrics.bootstrap import metric_table
from allcls.metrics.names import HEADLINE
from allcls.metrics.vectorised import expected_calibration_error, log_loss
from allcls.predictions import probabilities_of
from allcls.serving.export import Exported, export_graphs
from allcls.serving.model_card import CardFacts, markdown, runtime_note
from allcls.serving.provenance import about
from allcls.serving.quantize import check_drop, compared
from allcls.serving.settings import PackageSettings
from allcls.tracking import registry
from allcls.tracking import schema as run_schema
from allcls.tracking.logged_model import LoggedModel, log_packaged_model
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
                              "to replace it (a version registered from it keeps its own copy), or register the "
                              "one it has.")
        if settings.register_as and settings.alias:
            registry.check_alias_move(tracker, settings.register_as, settings.alias,
                                      output_columns(source.classes, source.members), settings.force_alias)
        name = settings.register_as or source.name
        spec, artifacts, facts = build(tracker, source, settings.rule, name, workdir, settings.dataset_root,
                                       settings.bootstrap, export=settings.export, runtime=settings.runtime,
                                       quantize=(settings.quantize, settings.quantize_max_drop))
        assert facts is not None  # asked for (card=True)
        saved = workdir / MODEL_PATH
        save_model(spec, artifacts, saved)
        card = markdown(facts)
        (saved / CARD_FILE).write_text(card)
        assert facts.test_labels is not None
        reliability_diagram(facts.reliability, facts.test_labels, f"{facts.name} on test", saved / "reliability.png")
        logged = log_packaged_model(tracker, run_id, saved, name)  # names it in saved/MLmodel too
        tracker.run(run_id).log_folder(saved, MODEL_PATH)
        uri = f"runs:/{run_id}/{MODEL_PATH}"
        print(f"Packaged {source.name} as {uri} ({len(spec.members)} member(s)).\n" + summary(spec, facts), flush=True)
        page = ui_view(tracker.tracking_uri, source.experiment_id, run_id)
        if settings.register_as:
            uri, version = register(tracker, run_id, logged, settings.register_as, settings.alias, spec, card)
            page = f"{ui_view(tracker.tracking_uri)}/#/models/{settings.register_as}/versions/{version}"
    print(f"Browse (the model card is on the model's page): {browse_command(tracker.tracking_uri)}, then open {page}"
          if is_local_store(tracker.tracking_uri) else f"Browse (the model card is on the model's page): {page}",
          flush=True)
    return uri


def build(tracker: Tracker, source: ModelSource, settings: RuleSettings, name: str, workdir: Path,
          dataset_root: str | None = None, bootstrap: int = 1000, card: bool = True, export: str = "none",
          runtime: str = "torch", quantize: tuple[str, float] = ("none", 0.0)
          ) -> tuple[ModelSpec, dict[str, str], CardFacts | None]:
    """The model's spec, its artifact files and the facts of its card (`name`: the model's). The
    decision rule is fitted on the run's own data, predicted through the networks as the served
    model predicts it (allcls.evaluation.safeguards); the card's test metrics are the run's logged ones.
    With `export=onnx`, each member is also an ONNX graph checked against its network on the
    validation cells (allcls.serving.export), and the model answers with `runtime` by default; with
    `quantize=("int8", max_drop)` the graphs are int8, answer, and are refused when test balanced
    accuracy drops by more than max_drop (allcls.serving.quantize)."""
    test_logged = source.logged_table(tracker, "test", workdir)
    if source.logged_table(tracker, "val", workdir) is None or test_logged is None:
        raise AllclsError(f"Run {source.run_id} has no predictions/val.parquet or test.parquet: package a training "
                          "or ensemble run that finished.")
    target = OwnData(source, dataset_root)
    try:
        predictor = predictor_for(source, target, tracker, workdir)
        validation = split_outputs(predictor, target.samples("val"), settings.ood.enabled, "Predicting validation")
        exported = export_graphs(predictor, validation, workdir, runtime, quantize[0], settings.seed) \
            if export == "onnx" else Exported()
        answering = exported.quantized or predictor  # the rule is fitted on what answers
        if exported.quantized is not None:
            validation = split_outputs(answering, target.samples("val"), settings.ood.enabled,
                                       "Predicting validation (int8)")
        train = split_outputs(answering, train_sample(target.samples("train"), settings.ood.train_cells,
                                                      settings.seed), True, "Features of training cells") \
            if settings.ood.enabled else None
        test = split_outputs(answering, target.samples("test"), settings.ood.enabled, "Predicting test") \
            if card or exported.quantized else None
    except AllclsError as error:
        raise AllclsError(f"{error} (packaging fits the referral rule and the out-of-distribution gate on the run's "
                          "own images: pass dataset_root=<where they are now>)") from None
    fitted = fit_rule(validation, train, source.classes, settings)
    for warning in fitted.warnings:
        log.warning(warning)
    artifacts = {ModelSpec.checkpoint_key(index): str(source.checkpoint(index, tracker, workdir, "nothing to package"))
                 for index in range(len(source.members))}
    artifacts.update(exported.artifacts)
    if fitted.gate is not None:
        artifacts[OOD_KEY] = str(fitted.gate.save(workdir / "ood.npz"))
    tags = source.tags
    scores = metric_table(probabilities_of(test_logged), test_logged["label"].to_numpy(),
                          test_logged["subject"].tolist(), source.classes, bootstrap, settings.seed)
    if exported.quantized is not None:  # the card's test metrics are then the int8 graphs' own
        assert test is not None
        int8 = metric_table(test.raw, test.labels, test.samples.subjects, source.classes, bootstrap, settings.seed)
        exported.spec["int8_on_test"] = compared(scores, int8)
        check_drop(exported.spec["int8_on_test"], quantize[1])
        scores = int8
    model = ModelSpec(source.classes, source.rule, source.members, fitted.rule,
                      {"run_id": source.run_id or "", "kind": source.kind, "dataset": tags.get("dataset", ""),
                       "classes": ",".join(source.classes), "split_hash": tags.get("split_hash", "")},
                      {row.metric: [float(row.value), float(row.ci_low), float(row.ci_high)]
                       for row in scores.itertuples() if row.metric in HEADLINE},
                      about(source.trained_on, source.manifest, source.classes, split_type(source, test_logged)),
                      exported.spec)
    spec_file = workdir / SPEC_FILE
    spec_file.write_text(model.to_json())
    artifacts["spec"] = str(spec_file)
    if not card:
        return model, artifacts, None
    assert test is not None
    _, measured = measure(test, fitted, source.classes, bootstrap, settings.seed)
    probes = probe_figures(answering, fitted, test, settings.seed) if settings.ood.probes else None
    calibration = calibration_facts(validation, test, fitted.rule.temperature)
    curves = {"without T": test.raw}
    if calibration:
        curves[f"with T = {calibration['temperature'][0]:.2f}"] = calibrated(test.raw, calibration["temperature"][0])
    facts = CardFacts(name, model, split_type(source, test_logged), scores,
                      (len(test_logged), int(test_logged["subject"].nunique())), calibration, measured, probes,
                      [*fitted.warnings, *exported.warnings], curves, test.labels)
    return model, artifacts, facts


def summary(spec: ModelSpec, facts: CardFacts) -> str:
    """What packaging says about the model's decision rule, one part per line."""
    rule = spec.decision
    lines = [f"  temperature: {rule.temperature_note}", f"  prediction sets: {rule.sets_note}",
             f"  protected miss rate: {rule.protect_note}", f"  out-of-distribution gate: {rule.ood_note}",
             f"  patients: {rule.patient_note}", f"  runtime: {runtime_note(spec)}"]
    lines += [f"  on test: {line}" for line in facts.decisions.lines()]
    if facts.probes is not None:
        far = facts.probes[facts.probes["name"] == "all far probes"]
        if len(far):
            lines.append(f"  probes: {far['rejected'].iloc[0]:.0%} of far-out-of-distribution probes rejected "
                         f"(AUROC {far['auroc'].iloc[0]:.3f}); the card lists every probe set")
    lines += [f"  WARNING: {warning}" for warning in facts.warnings]
    return "\n".join(lines)


def split_type(source: ModelSource, test: pd.DataFrame) -> str:
    if source.split_by == "image":
        return "by image (LEAKY: cells of one patient in train and test alike)"
    if test["subject"].isna().all():
        return "by content (the dataset has no patient ids: identical images kept together, a patient's cells may " \
               "be on both sides)"
    return "by subject (no patient's cells on two sides)"


def calibration_facts(validation: SplitOutputs, test: SplitOutputs, temperature: float | None
                      ) -> dict[str, tuple[float, float]]:
    """ECE and log loss on test, as the model's probabilities are and after the temperature fitted on
    validation (whether or not it was kept: the card shows what it would have done)."""
    fitted = temperature or fit_temperature(validation.raw, validation.labels)
    if fitted is None:
        return {}
    values = {}
    for name, metric in (("ece", expected_calibration_error), ("log_loss", log_loss)):
        before = float(metric(test.raw[None], test.labels)[0])
        values[name] = (before, float(metric(calibrated(test.raw, fitted)[None], test.labels)[0]))
    values["temperature"] = (fitted, fitted)
    return values


def save_model(spec: ModelSpec, artifacts: dict[str, str], folder: Path) -> None:
    """The pyfunc model folder: the spec, checkpoints and gate, the code that builds the model, and
    the columns it answers with (allcls.inference.model)."""
    outputs = [("label", "string"), *[(f"prob_{c}", "double") for c in spec.classes], ("set", "string"),
               ("refer", "boolean"), ("refer_reason", "string"), ("ood_score", "double")]
    if len(spec.members) > 1:
        outputs += [(spec.member_column(m), "string") for m in spec.members]
    outputs.append(("error", "string"))
    inputs = [("image", "string"), ("path", "string"), ("subject", "string")]  # subject: one more row per patient
    # runtime: what answers (torch | onnx); explain: also load the torch networks for Grad-CAM (the page)
    registry.save(folder, PYFUNC_FILE, artifacts, inputs=inputs, outputs=outputs, params={"tta": False},
                  input_example=pd.DataFrame({"image": [EXAMPLE_IMAGE]}),
                  config={"runtime": spec.runtime, "explain": False})


def register(tracker: Tracker, run_id: str, logged: LoggedModel, name: str, alias: str | None, spec: ModelSpec,
             card: str) -> tuple[str, str]:
    """Register the model the run was packaged as, its version tagged with where it came from and the
    columns it answers with, and described by its card. Returns models:/<name>@<alias> (or
    /<version>) and the version."""
    tags = {key: spec.source[key] for key in ("run_id", "dataset", "classes", "split_hash")}
    tags[registry.COLUMNS_TAG] = ",".join(output_columns(spec.classes, spec.members))
    version = registry.register(tracker, run_id, logged, name, alias, tags, card)
    registered = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    print(f"Registered as {name} version {version}" + (f", alias {alias}" if alias else "")
          + f": load it with mlflow.pyfunc.load_model('{registered}') or serve it with `mlflow models serve -m "
          f"{registered} --env-manager local`, MLFLOW_TRACKING_URI={tracker.tracking_uri} set.", flush=True)
    return registered, version
