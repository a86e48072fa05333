"""The ensemble task behind ensemble.py: members -> schemes -> honest selection -> MLflow.

Everything is computed before the MLflow run is created, so a refusal (no runs, runs that do not
match, broken tables) leaves nothing behind that looks like a result.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from allcls.ensemble.candidates import Candidates, load_candidates
from allcls.ensemble.choice import RULE
from allcls.ensemble.cross_validation import SchemeResult
from allcls.ensemble.report import comparison_table, html, markdown, score_chart, terminal_text, weight_heatmap
from allcls.ensemble.schemes import build_schemes
from allcls.ensemble.selection import Comparison, evaluate_schemes
from allcls.ensemble.settings import EnsembleSettings
from allcls.errors import AllclsError
from allcls.inference.combining import combine
from allcls.jobs.signals import stop_signals_raise
from allcls.predictions import make_table, write_table
from allcls.tracking import schema as run_schema
from allcls.tracking.store import browse_command
from allcls.tracking.tracker import Experiment, Tracker

log = logging.getLogger(__name__)


def run_ensemble(cfg: DictConfig) -> float:
    """Compare the configured weighting schemes; return the chosen scheme's cross-validated score."""
    settings = EnsembleSettings.of(cfg)
    run_ids = list(settings.run_ids)
    tracker = Tracker(settings.store.tracking_uri, settings.store.artifact_location)
    if not settings.experiment_name and not run_ids:
        raise AllclsError("Say which training runs to ensemble: experiment_name=<their experiment> (one per dataset; "
                          f"this store has {tracker.experiment_names()}) with sweep_id or filter, or run_ids=[...].")
    experiment = tracker.experiment(settings.experiment_name, create=bool(run_ids)) if settings.experiment_name \
        else None
    members = load_candidates(tracker, experiment, member_filter(tracker, experiment, settings), run_ids)
    experiment = experiment or members.experiment  # explicit run ids: the ensemble goes where its first member is
    schemes = build_schemes(settings.schemes, settings.metric, settings.combine, settings.seed, len(members.names))
    log.info("Comparing %d weighting schemes over %d members (%d validation, %d test samples)",
             len(schemes), len(members.names), len(members.val.labels), len(members.test.labels))
    comparison = evaluate_schemes(schemes, members, settings.metric, settings.cv_folds, settings.bootstrap,
                                  settings.seed, settings.report_top, settings.nested_cv)
    results, single, chosen = comparison.results, comparison.single, comparison.choice.chosen
    table = comparison_table(results, single, members.names, settings.metric)
    print("\n" + terminal_text(table, settings.metric, members.names) + "\n\n" + choice_text(comparison, settings)
          + "\n", flush=True)

    output_dir = settings.job.output_dir
    files = write_outputs(output_dir, table, chosen, members, settings.metric)
    tags = run_schema.ensemble_tags(members.tags, chosen.name, comparison.choice.reason, members.run_ids,
                                    members.names)
    # Named after what it is: the scheme chosen (and the rule that combines its members).
    opened = tracker.stage_run(experiment, run_schema.ENSEMBLE, f"ensemble-{chosen.name}-{chosen.rule}", tags,
                               settings.job)
    with opened as run, stop_signals_raise():
        run.log_params(run_schema.ensemble_params(
            settings.metric, chosen.rule, settings.combine, settings.cv_folds, settings.bootstrap, settings.seed,
            len(results), chosen.name, RULE, members.names, chosen.weights))
        run.log_metrics({**result_metrics(chosen, settings.metric), **nested_metrics(comparison, settings.metric),
                         **{f"best_single/{k}": v for k, v in result_metrics(single, settings.metric).items()}})
        for path in files["comparison"]:
            run.log_file(path, "comparison")
        for path in files["predictions"]:
            run.log_file(path, "predictions")
        run.log_file(files["members"], "ensemble")
        for result in results:
            tracker.child_run(run, experiment, result.name,
                              run_schema.scheme_tags(result.family, result.rule, result.rank, result.tied,
                                                     result.chosen),
                              run_schema.weight_params(members.names, result.weights),
                              result_metrics(result, settings.metric))
    print(f"Ensemble run {run.run_id} in experiment {experiment.name!r}; one child run per scheme.\n"
          f"Evaluate it (intervals, plots, calibration, TTA, Grad-CAM): "
          f"allcls-evaluate run_id={run.run_id} tta.enabled=true gradcam.enabled=true\n"
          f"Browse: {browse_command(tracker.tracking_uri, experiment.id, run.run_id)}", flush=True)
    return chosen.cv


def choice_text(comparison: Comparison, settings: EnsembleSettings) -> str:
    """The choice and its rule in words, and the nested estimate beside the chosen scheme's own score."""
    chosen, metric = comparison.choice.chosen, settings.metric
    lines = [f"Chosen: {chosen.name}. Why: {comparison.choice.reason}",
             f"Its own cross-validated {metric}, {chosen.cv:.3f} [{chosen.cv_interval[0]:.3f}, "
             f"{chosen.cv_interval[1]:.3f}], is optimistic: it was chosen for scoring high on those folds."]
    nested = comparison.nested
    if nested is not None:
        lines.append(f"Nested cross-validation (the whole choice repeated without each of {len(nested.picks)} outer "
                     f"folds, scored on it): {metric} {nested.score:.3f} [{nested.interval[0]:.3f}, "
                     f"{nested.interval[1]:.3f}]; chosen there: {nested.picks_text()}.")
    elif settings.nested_cv:
        lines.append("No nested estimate: an outer fold would leave fewer than two validation subjects to choose on.")
    return "\n".join(lines)


def nested_metrics(comparison: Comparison, metric: str) -> dict[str, float]:
    nested = comparison.nested
    if nested is None:
        return {}
    values = {f"nested_cv/{metric}": nested.score, f"nested_cv/{metric}_ci_low": nested.interval[0],
              f"nested_cv/{metric}_ci_high": nested.interval[1]}
    return {k: float(v) for k, v in values.items() if np.isfinite(v)}


def member_filter(tracker: Tracker, experiment: Experiment | None, settings: EnsembleSettings) -> str:
    """The MLflow filter for the members: `filter`, narrowed to `sweep_id` when one is given
    (`latest`: the sweep of the most recent finished training run)."""
    clauses = [settings.filter] if settings.filter else []
    if settings.sweep_id:
        if experiment is None:
            raise AllclsError("sweep_id needs experiment_name: the experiment whose sweep it is.")
        sweep = tracker.latest_sweep_id(experiment) if settings.sweep_id == "latest" else settings.sweep_id
        log.info("Members: the training runs of sweep %s", sweep)
        clauses.append(f"tags.sweep_id = '{sweep}'")
    return " and ".join(clauses)


def result_metrics(result: SchemeResult, metric: str) -> dict[str, float]:
    values = {f"val/{k}": v for k, v in result.val.items()}
    values.update({f"cv/{metric}": result.cv, f"cv/{metric}_ci_low": result.cv_interval[0],
                   f"cv/{metric}_ci_high": result.cv_interval[1]})
    values.update({f"test/{k}": v for k, v in result.test.items()})
    if result.test_interval:
        low, high = result.test_interval
        values.update({f"test/{metric}_ci_low": low, f"test/{metric}_ci_high": high})
    return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}


class OutputFiles(TypedDict):
    """What `write_outputs` wrote, by the artifact folder it goes to."""

    comparison: list[Path]
    predictions: list[Path]
    members: Path


def write_outputs(output_dir: Path, table: pd.DataFrame, chosen: SchemeResult, members: Candidates, metric: str
                  ) -> OutputFiles:
    """The comparison (CSV, Markdown, HTML, charts), the chosen ensemble's prediction tables in the
    training runs' schema, and members.json (what is needed to rebuild the ensemble)."""
    folder = output_dir / "comparison"
    folder.mkdir(parents=True, exist_ok=True)
    csv, md, page = folder / "comparison.csv", folder / "comparison.md", folder / "comparison.html"
    table.to_csv(csv, index=False)
    md.write_text(markdown(table))
    page.write_text(html(table, f"Ensemble weighting schemes ({metric})"))
    charts = [score_chart(table, metric, folder / "scores.png"),
              weight_heatmap(table, members.names, folder / "weights.png")]
    predictions: list[Path] = []
    for split, data in (("val", members.val), ("test", members.test)):
        probabilities = combine(data.probs, chosen.weights, chosen.rule)
        ensemble_table = make_table(data.sample_ids, data.subjects, data.labels, probabilities, members.classes)
        predictions.append(write_table(ensemble_table, output_dir / "predictions" / f"{split}.parquet"))
    members_file = output_dir / "members.json"
    members_file.write_text(json.dumps({
        "scheme": chosen.name, "combine": chosen.rule, "metric": metric, "classes": members.classes,
        "members": [{"run_id": r, "name": n, "weight": float(w)}
                    for r, n, w in zip(members.run_ids, members.names, chosen.weights, strict=True)],
    }, indent=2))
    return {"comparison": [csv, md, page, *charts], "predictions": predictions, "members": members_file}
