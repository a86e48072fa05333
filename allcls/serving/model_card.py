"""The model card of a packaged model, written from what its runs logged: what it is for and not
for, its data and split, its members, its test metrics with intervals, its calibration, its
referral rule and the coverage measured on test, and its known limits. Markdown: it is logged with
the model and shown as the registered version's description in the MLflow UI."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from allcls.inference.conformal import SetMeasures
from allcls.inference.spec import ModelSpec
from allcls.metrics.names import REPORTED

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
    calibration: dict[str, tuple[float, float]]  # metric -> (before, after temperature scaling)
    referral: SetMeasures | None  # the referral rule's sets, measured on test


def markdown(facts: CardFacts) -> str:
    spec, source = facts.spec, facts.spec.source
    lines = [f"# Model card: {facts.name}", "", NOTICE, "",
             "## Intended use",
             f"Classifying single microscope images of white blood cells into {', '.join(spec.classes)}, "
             "to study and compare Acute Lymphoblastic Leukemia classifiers. Images should look like the "
             "training data: same kind of stain, magnification and cell segmentation.", "",
             "## Data and split",
             f"- Dataset: `{source.get('dataset', '?')}`; classes in index order: {', '.join(spec.classes)}.",
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
    lines += ["", "## Test metrics", "With 95% bootstrap intervals resampling whole subjects (cells of one patient "
              "are correlated).", "", "| metric | value | 95% interval |", "|---|---|---|"]
    table = facts.test_metrics.set_index("metric")
    for name in [*REPORTED, *[m for m in table.index if m.startswith(("recall_", "specificity_"))]]:
        if name in table.index:
            row = table.loc[name]
            lines.append(f"| {name} | {row['value']:.3f} | [{row['ci_low']:.3f}, {row['ci_high']:.3f}] |")
    lines += ["", "## Calibration"]
    if spec.temperature is None:
        lines.append("No temperature was fitted (every validation prediction was right, or there were none): "
                     "probabilities are the model's own.")
    else:
        lines.append(f"Temperature scaling, T = {spec.temperature:.3f}, fitted on the validation predictions.")
        lines += ["", "| on test | before | after |", "|---|---|---|"]
        lines += [f"| {name} | {before:.3f} | {after:.3f} |" for name, (before, after) in facts.calibration.items()]
    lines += ["", "## Referral rule"]
    if spec.threshold is None or facts.referral is None:
        lines.append("None: the validation split has too few subjects for a conformal threshold at the coverage "
                     "asked for. Every image gets its top class only and is never flagged.")
    else:
        measured = facts.referral
        lines.append(f"Split-conformal prediction sets (least ambiguous sets) for {spec.coverage:.0%} coverage, "
                     f"fitted on the validation predictions: an image whose set holds more than one class is flagged "
                     f"\"refer to a human\". On test: coverage {measured.coverage:.3f} [{measured.coverage_low:.3f}, "
                     f"{measured.coverage_high:.3f}], mean set size {measured.mean_size:.2f}, "
                     f"{measured.refer_rate:.1%} of images referred.")
    lines += ["", "## Known limits",
              "- Measured on one dataset's test split; other labs, stains, microscopes and patient populations "
              "may behave differently (allcls-evaluate with dataset=... measures that).",
              "- The coverage of the prediction sets holds on average over images like the validation ones; it "
              "is not a guarantee for an individual image, nor under a shift of the data.",
              "- Grad-CAM maps show where the model looked, not why a cell is malignant."]
    if "image" in facts.split:
        lines.append("- The split put cells of one patient on both sides: the test metrics are inflated.")
    return "\n".join(lines) + "\n"
