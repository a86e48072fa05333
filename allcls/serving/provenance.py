"""What a packaged model learnt from, in words for whoever reads its answers: what each class is (the
dataset config's `class_meaning`, so a user's own dataset names its classes too), whether the cells
were synthetic, how many cells and patients each split held, and how it was split. Kept in the
model's spec (`ModelSpec.about`); the page's sidebar and its reports say it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from allcls.inference.spec import ModelSpec

SPLITS = ("train", "val", "test")
CONFIGS = Path(__file__).resolve().parents[1] / "conf" / "dataset"


def about(trained_on: dict[str, Any] | None, manifest: Path | None, classes: list[str], split: str) -> dict[str, Any]:
    """`ModelSpec.about` from a training run's dataset section and split manifest (None: a bare checkpoint)."""
    dataset = trained_on or {}
    meanings = dataset.get("class_meaning") or shipped_meaning(str(dataset.get("name", "")))
    meaning = {str(k): str(v) for k, v in meanings.items() if str(k) in classes}
    splits: dict[str, list[int]] = {}
    if manifest is not None:
        table = pd.read_csv(manifest, usecols=["subject", "split"], dtype={"subject": str})
        for name in SPLITS:
            part = table[table["split"] == name]
            splits[name] = [len(part), int(part["subject"].dropna().nunique())]
    return {"class_meaning": meaning, "synthetic": str(dataset.get("name", "")).startswith("synthetic"),
            "splits": splits, "split": split}


def shipped_meaning(dataset: str) -> dict[str, str]:
    """The class meanings allcls's own config of a dataset gives (cnmc, aria, synthetic-*): for runs
    trained before the configs had them."""
    config = CONFIGS / f"{dataset.split('-')[0]}.yaml"
    if not dataset or not config.is_file():
        return {}
    loaded = OmegaConf.load(config)
    meanings = loaded.get("class_meaning") if isinstance(loaded, DictConfig) else None
    return {str(k): str(v) for k, v in (meanings or {}).items()}


def trained_on_sentence(about: dict[str, Any], dataset: str) -> str:
    """One sentence: what the model was trained and tested on."""
    if not about.get("splits"):
        synthetic = " SYNTHETIC cells drawn by allcls (not real patients: real cells are outside what it knows) in" \
            if about.get("synthetic") else ""
        return f"Trained on{synthetic} `{dataset or '?'}` (packaged before allcls 0.4: no counts recorded)."
    splits = about.get("splits") or {}

    def counted(name: str) -> str:
        cells, subjects = splits.get(name, [0, 0])
        return f"{cells} cells" + (f" of {subjects} patients" if subjects else "")

    what = "SYNTHETIC cells drawn by allcls (not real patients: real cells are outside what it knows)" \
        if about.get("synthetic") else f"`{dataset}`"
    counts = f": trained on {counted('train')}, tuned on {counted('val')}, tested on {counted('test')}" if splits \
        else ""
    return f"Trained on {what}{counts}; split {about.get('split', '?')}."


def about_of(spec: ModelSpec) -> dict[str, Any]:
    """What the spec says the model learnt from; for a model packaged before allcls 0.4, what its
    dataset's name tells (its classes' meanings in allcls's configs, whether its cells were synthetic)."""
    if spec.about:
        return spec.about
    dataset = spec.source.get("dataset", "")
    meanings = {c: m for c, m in shipped_meaning(dataset).items() if c in spec.classes}
    return {"class_meaning": meanings, "synthetic": dataset.startswith("synthetic")} if dataset else {}
