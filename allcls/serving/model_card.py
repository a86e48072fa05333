"""The model card of a packaged model, written from what its runs logged: what it is for and not
for, its data and split, its members, its test metrics with intervals, its calibration, its
referral rule and the coverage measured on test, and its known limits. Markdown: it is logged with
the model and shown as the registered version's description in the MLflow UI."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from allcls.evaluation.decision_measures import DecisionMeasures
from allcls.inference.decision import REASONS
from allcls.inference.spec import ModelSpec
from allcls.metrics.names import REPORTED
from allcls.serving.provenance import trained_on_sentence

NOTICE = ("**Research use only. Not a diagnostic device.** This model has not been validated for "
          "clinical use; a prediction is not a diagnosis and must not replace a pathologist's review.")


@dataclass(frozen=True)
class CardFacts:
    """The numbers and words a card needs, gathered by allcls.serving.package from the runs."""

    name: str  # the model's name (registered name, or the run's)
    spec: ModelSpec
    split: str  # e.g. "by subject (no patient's cells on both sides)"
    test_metrics: pd.DataFrame  # metric, value, ci_low, ci_high (allcls.metrics.bootstrap.metric_table)
    test_size: tuple[int, int]  # images, subjects (0 where unknown)
    calibration: dict[str, tuple[float, float]]  # metric -> (before, after the temperature fitted on validation)
    decisions: DecisionMeasures  # the decision rule, measured on test
    probes: pd.DataFrame | None  # the out-of-distribution gate on each probe set (allcls.evaluation.safeguards)
    warnings: list[str]  # a rule that refers nobody or nearly everybody on validation
    reliability: dict[str, np.ndarray] = field(default_factory=dict)  # test probabilities before / after
    test_labels: np.ndarray | None = None


def markdown(facts: CardFacts) -> str:
    spec, source = facts.spec, facts.spec.source
    lines = [f"# Model card: {facts.name}", "", NOTICE, "",
             "## Intended use",
             f"Classifying single microscope images of white blood cells into {', '.join(spec.classes)}, "
             "to study and compare Acute Lymphoblastic Leukemia classifiers. Images should look like the "
             "training data: same kind of stain, magnification and cell segmentation.", "",
             "## Data and split",
             f"- Dataset: `{source.get('dataset', '?')}`; classes in index order: {', '.join(spec.classes)}.",
             *[f"- `{name}`: {meaning}." for name, meaning in spec.about.get("class_meaning", {}).items()],
             *([f"- {trained_on_sentence(spec.about, source.get('dataset', ''))}"] if spec.about else []),
             f"- Split: {facts.split}; split hash `{source.get('split_hash', '?')}` (runs with the same hash saw "
             "the same split).",
             f"- Test set: {facts.test_size[0]} images" + (f" of {facts.test_size[1]} subjects." if facts.test_size[1]
                                                           else " (no subject ids)."), "",
             "## Model",
             f"- Source: {source.get('kind', 'run')} run `{source.get('run_id', '?')}`.",
             f"- Combining rule: {spec.rule}." if len(spec.members) > 1 else "- A single model."]
    lines += ["", "| member | backbone | weight | input |", "|---|---|---|---|"]
    for member in spec.members:
        crop = ", crop to the cell" if member.preprocessing.roi_crop else ""
        lines.append(f"| {member.name} | {member.backbone} | {member.weight:.3f} | "
                     f"{member.preprocessing.spec.size} px{crop} |")
    lines += ["", f"Runtime: {runtime_note(spec)}."]
    lines += ["", "## Test metrics", "With 95% bootstrap intervals resampling whole subjects (cells of one patient "
              "are correlated).", "", "| metric | value | 95% interval |", "|---|---|---|"]
    table = facts.test_metrics.set_index("metric")
    for name in [*REPORTED, *[m for m in table.index if m.startswith(("recall_", "specificity_"))]]:
        if name in table.index:
            row = table.loc[name]
            lines.append(f"| {name} | {row['value']:.3f} | [{row['ci_low']:.3f}, {row['ci_high']:.3f}] |")
    rule = spec.decision
    lines += ["", "## Probabilities", f"`prob_<class>` is the {spec.probability_name}.",
              f"Temperature scaling: {rule.temperature_note}."]
    if facts.calibration:
        temperature = facts.calibration["temperature"][0]
        served = "with T" if spec.temperature is not None else "without T"
        lines += ["", f"| on test | without T | with T = {temperature:.2f} |", "|---|---|---|"]
        lines += [f"| {name} | {before:.3f} | {after:.3f} |" for name, (before, after) in facts.calibration.items()
                  if name != "temperature"]
        lines.append(f"The model serves the probabilities {served}. The reliability diagram of both is "
                     "`reliability.png`, beside this card in the model's folder.")
    lines += ["", "## When the model refers a cell to a human",
              "Every row says `refer` and, in `refer_reason`, why: " + "; ".join(
                  f"**{reason}**: {meaning}" for reason, meaning in REASONS.items()) + ". A referred row keeps "
              "its probabilities, but its label is not an answer.", "",
              f"- Prediction sets: {rule.sets_note}.",
              f"- Protected miss rate: {rule.protect_note}.",
              f"- Out-of-distribution gate: {rule.ood_note}.", "", "On test:", ""]
    lines += [f"- {line}" for line in facts.decisions.lines()]
    lines += [f"- **Warning**: {warning}" for warning in facts.warnings]
    if facts.probes is not None:
        lines += ["", "### Images that are not the model's cells (probes)",
                  "How the out-of-distribution gate scores images of other kinds against the test cells (AUROC: "
                  "1 separates them completely) and the share it rejects.", "",
                  "| probe set | kind | images | AUROC | rejected |", "|---|---|---|---|---|"]
        lines += [f"| {row.name} | {row.kind} | {row.images} | {row.auroc:.3f} | {row.rejected:.1%} |"
                  for row in facts.probes.itertuples(index=False)]
    lines += ["", "## One decision per patient", f"Rule: {rule.patient_note}."]
    if rule.patient is not None:
        lines.append(f"A patient's probability is the {rule.patient.aggregation}.")
    patient_table = facts.decisions.patients
    if patient_table is not None:
        lines += ["", "| on test patients | value | 95% interval |", "|---|---|---|"]
        lines += [f"| patients | {row.value:.0f} | |" if row.metric == "patients" else
                  f"| {row.metric} | {row.value:.3f} | |" if not np.isfinite(row.ci_low) else
                  f"| {row.metric} | {row.value:.3f} | [{row.ci_low:.3f}, {row.ci_high:.3f}] |"
                  for row in patient_table.itertuples(index=False)]
    by_class = rule.sets is None or rule.sets.kind == "class_conditional"
    lines += ["", "## Known limits",
              "- Measured on one dataset's test split; other labs, stains, microscopes and patient populations "
              "may behave differently (allcls-evaluate with dataset=... measures that).",
              f"- The coverage of the prediction sets holds {'for each class' if by_class else 'over classes'} on "
              "average over images like the validation ones; it is not a guarantee for an individual image, nor "
              "under a shift of the data.",
              "- The out-of-distribution gate is measured on the probes above; images unlike both the training "
              "cells and the probes may pass it.",
              "- Grad-CAM maps show where the model looked, not why a cell is malignant."]
    if "image" in facts.split:
        lines.append("- The split put cells of one patient on both sides: the test metrics are inflated.")
    return "\n".join(lines) + "\n"


def runtime_note(spec: ModelSpec) -> str:
    """What answers for the model by default, and how its ONNX graphs agree with the networks."""
    export = spec.export
    if not export.get("format"):
        return "torch (no ONNX graphs: packaged with export=none)"
    note = (f"{spec.runtime} by default; ONNX graphs (opset {export['opset']}) agree with the torch networks on "
            f"{export['label_agreement']:.1%} of {export['cells']} validation cells' labels, probabilities within "
            f"{export['max_abs_difference']:.1g} (runtime=torch|onnx chooses)")
    if export.get("quantized") == "int8":
        accuracy = export["int8_on_test"]["balanced_accuracy"]
        agree = export["int8_label_agreement"]
        note += (f"; the graphs are quantised to int8 (labels agree with torch's on {agree:.1%} of the validation "
                 f"cells; test balanced accuracy {accuracy['fp32'][0]:.3f} -> {accuracy['int8'][0]:.3f}, and the "
                 "test metrics below are the int8 graphs')")
    return note
