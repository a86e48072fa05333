"""The evaluation task behind evaluate.py: a source (run, ensemble run or checkpoint) and a target
(its own data or another dataset) -> prediction tables -> one result -> one evaluation run.

A run's logged prediction tables are used as they are (nothing is recomputed); images are read and
models loaded only for what needs them: another split or dataset, test-time augmentation,
Grad-CAM. Results go to a new evaluation run nested under the evaluated run, so the training run
stays the record of training and every evaluation (split, dataset, TTA) is its own comparable run.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from allcls.errors import AllclsError
from allcls.evaluation.decision_measures import measure, probe_figures
from allcls.evaluation.gradcam import CamGrid, choose_samples
from allcls.evaluation.result import Calibration, DecisionResult, compute_result
from allcls.evaluation.safeguards import SplitOutputs, fit_rule, split_outputs, table_outputs, train_sample
from allcls.evaluation.settings import EvaluateSettings
from allcls.evaluation.sources import ModelSource, resolve_source
from allcls.evaluation.targets import OwnData, Target, make_target, predictor_for
from allcls.evaluation.transductive import NeighbourCorrection, neighbour_correction
from allcls.evaluation.writer import log_result
from allcls.inference.gradcam import explain
from allcls.inference.predictor import Predictor
from allcls.machine import keep_freed_memory
from allcls.predictions import class_names_of, probabilities_of
from allcls.tracking.store import browse_command
from allcls.tracking.tracker import Experiment, Tracker

log = logging.getLogger(__name__)

def evaluate(cfg: DictConfig) -> float:
    """Evaluate as configured (conf/evaluate.yaml); return the weighted F1 of the evaluated split."""
    settings = EvaluateSettings.of(cfg)
    keep_freed_memory()  # CPU forward passes would otherwise spend more time in page faults than in the models
    with tempfile.TemporaryDirectory(prefix="allcls-evaluate-") as folder:  # checkpoints, configs, tables
        workdir = Path(folder)
        tracker, experiment, source = open_source(settings, workdir)
        inputs = Inputs(source, make_target(settings, source), settings, tracker, workdir)
        split = settings.split

        table = inputs.target.logged_table(tracker, split, workdir)
        origin = "logged by the evaluated run" if table is not None else "recomputed"
        if table is None:
            table = inputs.table(split)
        if class_names_of(table) != source.classes:
            raise AllclsError(f"The predictions have classes {class_names_of(table)}, the model {source.classes}.")
        calibrate = settings.calibration.temperature_scaling
        validation = validation_table(inputs)
        decision = decision_result(inputs, table, validation)
        tta = (settings.views, inputs.table(split, settings.views, "Predicting with TTA")) if settings.tta.enabled \
            else None
        correction = settings.transductive_correction
        transductive = (correction.description, inputs.corrected(table, split, correction)) \
            if correction.enabled else None
        cams = gradcam_grid(inputs, table, settings, source.name) if settings.gradcam.enabled else None

        result = compute_result(
            evaluated=source.name, dataset=inputs.target.dataset_name, split=split, classes=source.classes,
            table=table, origin=origin, bootstrap=settings.bootstrap, seed=settings.seed, calibrate=calibrate,
            validation=validation if calibrate else None, tta=tta, transductive=transductive, gradcam=cams,
            decision=decision)
        report_calibration(result.calibration)
        print("\n" + result.summary() + "\n", flush=True)
        run_id = log_result(tracker, experiment, source, result, settings, inputs.target.split_hash)
    print(f"Evaluation run {run_id} in experiment {experiment.name!r}"
          + (f", nested under run {source.run_id}" if source.run_id else "")
          + f".\nBrowse: {browse_command(tracker.tracking_uri, experiment.id, run_id)}", flush=True)
    return result.metric("f1_weighted")


def open_source(settings: EvaluateSettings, workdir: Path) -> tuple[Tracker, Experiment, ModelSource]:
    """The store, the evaluated source, and the experiment its evaluation goes to: the run's own,
    else `experiment_name`, else the evaluated dataset's name."""
    tracker = Tracker(settings.store.tracking_uri, settings.store.artifact_location)
    source = resolve_source(tracker, settings.run_id, settings.ckpt_path, workdir)
    if source.run is not None:
        return tracker, tracker.experiment_of(source.run), source
    return tracker, tracker.experiment(settings.target_name, create=True), source


class Inputs:
    """The target's images and the source's models that predict them, loaded on first use only: a
    run's logged predictions need neither. Each view of a split is predicted once: the plain
    table's predictions are the TTA table's identity view."""

    def __init__(self, source: ModelSource, target: Target, settings: EvaluateSettings, tracker: Tracker,
                 workdir: Path):
        self.source, self.target, self.settings = source, target, settings
        self.tracker, self.workdir = tracker, workdir
        self.predicted: dict[tuple[str, str], np.ndarray] = {}  # (split, view) -> (members, images, classes)
        self.split_outputs: dict[tuple[str, int | None], SplitOutputs] = {}

    @functools.cached_property
    def predictor(self) -> Predictor:
        settings = self.settings
        return predictor_for(self.source, self.target, self.tracker, self.workdir, settings.device,
                             settings.batch_size, settings.num_workers)

    def outputs(self, split: str, limit: int | None = None) -> SplitOutputs:
        """The split through the networks as the served model sees it (each image as it is, no
        test-time augmentation), with what the gate reads; at most `limit` cells, drawn per class."""
        if (split, limit) not in self.split_outputs:
            samples = self.target.samples(split)
            if limit is not None:
                samples = train_sample(samples, limit, self.settings.seed)
            outputs = split_outputs(self.predictor, samples, True, f"Predicting {split} for the decision rule")
            self.split_outputs[split, limit] = outputs
        return self.split_outputs[split, limit]

    def corrected(self, table: pd.DataFrame, split: str, correction: NeighbourCorrection) -> pd.DataFrame:
        """`table` after the transductive neighbour correction over the whole split."""
        samples = self.target.samples(split)
        if samples.sample_ids != table["sample_id"].tolist():
            raise AllclsError(f"The {split} predictions and the {split} images do not list the same samples.")
        features = self.predictor.features(samples.paths, desc="Features for the neighbour correction")
        probabilities = neighbour_correction(probabilities_of(table), features, correction, self.predictor.weights)
        return samples.table(probabilities, self.source.classes)

    def table(self, split: str, views: Sequence[str] = ("identity",), desc: str = "Predicting") -> pd.DataFrame:
        """The prediction table of `split` of the target, averaged over `views`."""
        samples = self.target.samples(split)
        missing = [view for view in views if (split, view) not in self.predicted]
        if missing:
            predicted = self.predictor.view_probabilities(samples.paths, missing, desc)
            for view, probabilities in zip(missing, predicted, strict=True):
                self.predicted[split, view] = probabilities
        per_view = [self.predicted[split, view] for view in views]
        return samples.table(self.predictor.combine_views(per_view), self.source.classes)


def validation_table(inputs: Inputs) -> pd.DataFrame | None:
    """The validation predictions a temperature is fitted on: the ones the run logged, else the
    target's validation split predicted; None when there is neither (a bare checkpoint evaluated
    on every image of a dataset)."""
    logged = inputs.source.logged_table(inputs.tracker, "val", inputs.workdir)
    if logged is not None:
        return logged
    if not inputs.target.has_split("val"):
        return None
    return inputs.table("val", desc="Predicting validation")


def decision_result(inputs: Inputs, table: pd.DataFrame, validation: pd.DataFrame | None) -> DecisionResult | None:
    """The decision rule fitted on the model's own data and what it does on the evaluated split
    (each image as it is: the served model's decisions, without test-time augmentation). With the
    out-of-distribution gate (on by default) the images are read: the gate's statistics come from
    the model's own training split, whatever dataset is evaluated; without it, the rule is fitted
    on the logged validation predictions alone (but for a vote, whose logged table holds shares of
    votes: its members' probabilities are predicted again)."""
    settings, source = inputs.settings, inputs.source
    rule = settings.rule
    if rule.ood.enabled and source.trained_on is None:
        log.warning("The out-of-distribution gate is skipped: a checkpoint file carries no training split to fit it "
                    "on (evaluate its training run instead).")
        rule = replace(rule, ood=replace(rule.ood, enabled=False))
    train = None
    if rule.ood.enabled or source.rule == "vote":  # a vote's logged table holds vote shares, not probabilities
        own = inputs if isinstance(inputs.target, OwnData) else \
            Inputs(source, OwnData(source, settings.dataset_root), settings, inputs.tracker, inputs.workdir)
        validation_outputs = own.outputs("val")
        train = own.outputs("train", rule.ood.train_cells) if rule.ood.enabled else None
        evaluated = inputs.outputs(settings.split)
    elif validation is not None:
        validation_outputs, evaluated = table_outputs(validation), table_outputs(table)
    else:
        log.warning("No decision rule: there are no validation predictions to fit it on.")
        return None
    if rule.coverage is None and not rule.referral.protect and not rule.ood.enabled:
        return None
    fitted = fit_rule(validation_outputs, train, source.classes, rule)
    for warning in fitted.warnings:
        log.warning(warning)
    decisions, measures = measure(evaluated, fitted, source.classes, settings.bootstrap, settings.seed)
    gate = fitted.gate
    ood = gate.scores(evaluated.inputs, evaluated.features, evaluated.logits) if gate is not None else None
    probes = probe_figures(inputs.predictor, fitted, evaluated, settings.seed) if rule.ood.probes else None
    return DecisionResult(fitted.rule, decisions, measures, probes, tuple(fitted.warnings), ood,
                          tuple(evaluated.samples.sample_ids), evaluated.labels)


def gradcam_grid(inputs: Inputs, table: pd.DataFrame, settings: EvaluateSettings, source_name: str) -> CamGrid:
    """Grad-CAM of chosen samples of the evaluated split, explaining the class that was predicted."""
    probabilities = probabilities_of(table)
    labels, predicted = table["label"].to_numpy(), probabilities.argmax(axis=1)
    chosen = choose_samples(labels, predicted, settings.gradcam.samples_per_class, settings.seed,
                            list(settings.gradcam.sample_ids), table["sample_id"].tolist())
    paths = inputs.target.samples(settings.split).paths
    images, maps = explain(inputs.predictor, [paths[i] for i in chosen], predicted[chosen])
    classes = inputs.source.classes
    captions = [f"true {classes[labels[i]]} / pred {classes[predicted[i]]} ({probabilities[i, predicted[i]]:.2f})"
                for i in chosen]
    return CamGrid(images, maps, captions, f"Grad-CAM of {source_name} on {settings.split}: "
                   "where it looks for the predicted class")


def report_calibration(calibration: Calibration) -> None:
    if calibration.temperature is not None:
        log.info("Temperature fitted on validation: T = %.3f", calibration.temperature)
    elif calibration.status != "off":
        log.warning("Temperature scaling is skipped: %s.", calibration.status)

