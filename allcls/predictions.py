"""The prediction table: the contract between training and every stage after it.

One table per (run, split), stored as the MLflow artifact `predictions/<split>.parquet`:

    sample_id, subject, label, prob_<class>...

`sample_id` is the image path relative to the dataset root, `label` the true class index, and one
probability column per class in class-index order; each row sums to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from allcls.errors import AllclsError

PROB_PREFIX = "prob_"
KEY_COLUMNS = ["sample_id", "subject", "label"]
SUM_TOLERANCE = 1e-4


def prob_column(class_name: str) -> str:
    return f"{PROB_PREFIX}{class_name}"


def make_table(sample_ids: Sequence[str] | np.ndarray, subjects: Sequence[str | None] | np.ndarray,
               labels: Sequence[int] | np.ndarray, probabilities: np.ndarray,
               class_names: Sequence[str]) -> pd.DataFrame:
    table = pd.DataFrame({
        "sample_id": pd.Series(list(sample_ids), dtype="string"),
        "subject": pd.Series(list(subjects), dtype="string"),
        "label": np.asarray(labels, dtype=np.int64),
    })
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    for index, name in enumerate(class_names):
        table[prob_column(name)] = probabilities[:, index]
    return validate_table(table, class_names)


def class_names_of(table: pd.DataFrame) -> list[str]:
    return [c.removeprefix(PROB_PREFIX) for c in table.columns if c.startswith(PROB_PREFIX)]


def probabilities_of(table: pd.DataFrame) -> np.ndarray:
    return table[[prob_column(c) for c in class_names_of(table)]].to_numpy(dtype=np.float64)


def validate_table(table: pd.DataFrame, class_names: Sequence[str] | None = None, where: str = "prediction table"
                   ) -> pd.DataFrame:
    """Check the schema and the probabilities; raise AllclsError saying what is wrong."""
    missing = [c for c in KEY_COLUMNS if c not in table.columns]
    if missing:
        raise AllclsError(f"{where} has no column(s) {missing}: it is not an allcls prediction table.")
    names = class_names_of(table)
    if len(names) < 2:
        raise AllclsError(f"{where} has {len(names)} prob_<class> column(s); a classifier needs at least 2.")
    if class_names is not None and list(class_names) != names:
        raise AllclsError(f"{where} has classes {names}, expected {list(class_names)} (in index order).")
    duplicated = table["sample_id"][table["sample_id"].duplicated()]
    if len(duplicated):
        raise AllclsError(f"{where} lists sample {duplicated.iloc[0]!r} more than once.")
    labels = table["label"].to_numpy()
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise AllclsError(f"{where} has labels outside 0..{len(names) - 1}.")
    probabilities = probabilities_of(table)
    if not np.isfinite(probabilities).all():
        raise AllclsError(f"{where} has NaN or infinite probabilities.")
    if (probabilities < 0).any() or (probabilities > 1).any():
        raise AllclsError(f"{where} has probabilities outside [0, 1].")
    worst = np.abs(probabilities.sum(axis=1) - 1).max(initial=0.0)
    if worst > SUM_TOLERANCE:
        raise AllclsError(f"{where} has rows whose probabilities do not sum to 1 (off by up to {worst:.3g}).")
    return table


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    return path


def read_table(path: str | Path, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    return validate_table(pd.read_parquet(path), class_names, where=str(path))


def align(tables: Sequence[pd.DataFrame], names: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Line up the tables of several models for one split by sample_id.

    Returns the shared key columns (sample_id, subject, label; sorted by sample_id) and the
    probabilities as one array (models x samples x classes). Every table must list the same
    samples with the same labels and classes; the error names the first difference.
    """
    reference, reference_name = tables[0].set_index("sample_id").sort_index(), names[0]
    classes = class_names_of(tables[0])
    stacked = []
    for table, name in zip(tables, names, strict=True):
        if class_names_of(table) != classes:
            raise AllclsError(f"{name} has classes {class_names_of(table)} but {reference_name} has {classes}: "
                              "an ensemble needs one class order.")
        indexed = table.set_index("sample_id")
        missing = reference.index.difference(indexed.index)
        extra = indexed.index.difference(reference.index)
        if len(missing) or len(extra):
            raise AllclsError(
                f"{name} and {reference_name} predict different samples: "
                + (f"{len(missing)} missing from {name} (e.g. {missing[0]!r}) " if len(missing) else "")
                + (f"{len(extra)} only in {name} (e.g. {extra[0]!r}) " if len(extra) else "")
                + "- they were not trained on the same split.")
        indexed = indexed.loc[reference.index]
        wrong = reference.index[(indexed["label"] != reference["label"]).to_numpy()]
        if len(wrong):
            raise AllclsError(f"{name} and {reference_name} disagree on the label of {wrong[0]!r}.")
        stacked.append(probabilities_of(indexed))
    keys = reference.reset_index()[KEY_COLUMNS]
    return keys, np.stack(stacked)
