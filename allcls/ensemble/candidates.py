"""The candidates of an ensemble (its library of models, in Caruana's word): training runs chosen in
MLflow, checked to be comparable, with their logged prediction tables aligned into one probability
array per split. The weighting schemes then decide which of them become members, with what weight."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from allcls.errors import AllclsError
from allcls.metrics.bootstrap import resampling_groups
from allcls.predictions import align
from allcls.tracking.schema import DATA_TAGS
from allcls.tracking.tracker import Experiment, Tracker


@dataclass(frozen=True)
class SplitPredictions:
    """All members' predictions for one split: probs is (models, samples, classes)."""

    sample_ids: np.ndarray
    subjects: np.ndarray
    labels: np.ndarray
    probs: np.ndarray

    def subset(self, index: np.ndarray) -> SplitPredictions:
        return SplitPredictions(self.sample_ids[index], self.subjects[index], self.labels[index], self.probs[:, index])

    def groups(self) -> np.ndarray:
        """Resampling and cross-validation units: the subject where known, else the sample itself."""
        return resampling_groups(self.subjects)


@dataclass(frozen=True)
class Candidates:
    run_ids: list[str]
    names: list[str]
    tags: dict[str, str]  # the data tags every member shares: dataset, classes, split_hash
    val: SplitPredictions
    test: SplitPredictions
    experiment: Experiment  # the first run's

    @property
    def classes(self) -> list[str]:
        return self.tags["classes"].split(",")


def member_names(runs) -> list[str]:
    """Run names, made unique with the run id where two runs share one."""
    names = [run.info.run_name or run.info.run_id[:8] for run in runs]
    counts: defaultdict[str, int] = defaultdict(int)
    for name in names:
        counts[name] += 1
    return [f"{name}@{run.info.run_id[:6]}" if counts[name] > 1 else name
            for name, run in zip(names, runs, strict=True)]


def check_comparable(runs, names: list[str]) -> dict[str, str]:
    """Refuse members trained on different data, classes or splits, listing which run has what."""
    shared = {}
    for tag in DATA_TAGS:
        values = defaultdict(list)
        for run, name in zip(runs, names, strict=True):
            values[run.data.tags.get(tag, "<missing>")].append(name)
        if len(values) > 1:
            listing = "; ".join(f"{tag}={value}: {', '.join(members)}" for value, members in values.items())
            raise AllclsError(f"The runs do not share one {tag} ({listing}). Select runs of one dataset and "
                              "one split, e.g. with a filter on tags.sweep_id or tags.split_hash.")
        shared[tag] = next(iter(values))
    return shared


def load_candidates(tracker: Tracker, experiment: Experiment | None, filter_string: str = "",
                    run_ids: list[str] | None = None) -> Candidates:
    """The finished training runs of `experiment` that match `filter_string`, or the runs `run_ids`,
    with their val and test predictions aligned."""
    if run_ids:
        runs = [tracker.get_run(run_id, hint="check run_ids") for run_id in run_ids]
        where = f"run ids {run_ids}"
    else:
        assert experiment is not None  # runs are found by id, or in an experiment
        runs = tracker.finished_training_runs(experiment, filter_string)
        where = f"experiment {experiment.name!r} with filter {filter_string!r}"
    if not runs:
        raise AllclsError(f"No finished training runs match {where}. Check experiment_name and filter "
                          "(MLflow syntax, e.g. 'tags.sweep_id = \"multirun/train/2026-01-01/10-00-00-000000\"').")
    if len(runs) < 2:
        raise AllclsError(f"Only one run matches {where} ({runs[0].info.run_id}): an ensemble needs two or more.")
    names = member_names(runs)
    tags = check_comparable(runs, names)
    tables: dict[str, list[pd.DataFrame]] = {"val": [], "test": []}
    with tempfile.TemporaryDirectory(prefix="allcls-ensemble-") as folder:
        for run, name in zip(runs, names, strict=True):
            for split in tables:
                table = tracker.prediction_table(run.info.run_id, split, Path(folder) / run.info.run_id,
                                                 tags["classes"].split(","),
                                                 where=f"predictions/{split}.parquet of run {name}")
                if table is None:
                    raise AllclsError(f"Run {name} ({run.info.run_id}) has no predictions/{split}.parquet: "
                                      "did it finish training? Leave it out of the selection.")
                tables[split].append(table)
    splits = {}
    for split, split_tables in tables.items():
        keys, probs = align(split_tables, [f"{name} ({split})" for name in names])
        splits[split] = SplitPredictions(keys["sample_id"].to_numpy(dtype=object),
                                         keys["subject"].to_numpy(dtype=object),
                                         keys["label"].to_numpy(dtype=np.int64), probs)
    return Candidates([run.info.run_id for run in runs], names, tags, splits["val"], splits["test"],
                      tracker.experiment_of(runs[0]))
