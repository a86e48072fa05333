"""Batch prediction: a packaged model (or any run, packaged on the fly) over a folder, a file or a
glob of images, into one CSV:

    allcls-predict model=models:/all-ensemble@champion input=/data/new_cells output=predictions.csv

One row per image (`path, label, prob_<class>..., set, refer`, each member's label for an ensemble),
written batch by batch, so an interruption keeps every finished row. Odd images are converted as
training converts them; unreadable ones are skipped and listed at the end with the reason. The CSV
never goes next to the user's images, and an existing one is kept unless `overwrite=true`.
"""

from __future__ import annotations

import glob
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omegaconf import DictConfig

from allcls.data.images import is_image_file
from allcls.errors import AllclsError
from allcls.evaluation.sources import resolve_source
from allcls.inference.decoding import decode_files
from allcls.inference.model import Model
from allcls.inference.views import views_for
from allcls.machine import keep_freed_memory
from allcls.progress import progress
from allcls.serving.package import build
from allcls.serving.settings import PredictSettings, Referral
from allcls.tracking import registry
from allcls.tracking.registry import MODEL_PATH
from allcls.tracking.store import require_existing
from allcls.tracking.tracker import Tracker

log = logging.getLogger(__name__)

BATCH = 256  # images decoded, predicted and written at a time


def predict(cfg: DictConfig) -> Path:
    """Predict every image of `input` into `output` (conf/predict.yaml); return the CSV's path."""
    settings = PredictSettings.of(cfg)
    keep_freed_memory()  # CPU forward passes would otherwise spend much of their time in page faults
    images = image_files(str(settings.input))
    output = output_path(Path(settings.output).expanduser(), images, settings.overwrite)
    with tempfile.TemporaryDirectory(prefix="allcls-predict-") as folder:
        model = load(settings, Path(folder))
        views = views_for(settings.tta)
        skipped: list[tuple[str, str]] = []
        partial = output.with_name(f".{output.name}.partial")
        written = 0
        batches = [images[start:start + BATCH] for start in range(0, len(images), BATCH)]
        described = f"Predicting {len(images)} images" + (" with TTA" if settings.tta else "")
        with progress(desc=described, total=len(images), unit="image") as bar, \
                ThreadPoolExecutor(max_workers=1) as reader:
            # The next batch is read and decoded in a thread (the decoders release the GIL) while the
            # models predict this one.
            upcoming = reader.submit(decode_files, batches[0])
            for number, paths in enumerate(batches):
                decoded, errors = upcoming.result()
                if number + 1 < len(batches):
                    upcoming = reader.submit(decode_files, batches[number + 1])
                rows = model.rows(decoded, errors, views, show_progress=False)
                rows.insert(0, "path", paths)
                skipped += [(path, error) for path, error in zip(paths, errors, strict=True) if error]
                kept = rows[rows["error"] == ""].drop(columns="error")
                kept.to_csv(partial, mode="a", header=written == 0, index=False)
                written += len(kept)
                bar.update(len(paths))
        if written:
            partial.replace(output)
    report(output, written, skipped)
    return output


def image_files(source: str) -> list[str]:
    """The image files of a folder (recursively), a single file, or a glob, sorted."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and is_image_file(p)]
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
        if not found:
            raise AllclsError(f"input={source} is neither a folder, nor a file, nor a glob that matches files: "
                              "check the path.")
    files = sorted(str(p) for p in found)
    if not files:
        raise AllclsError(f"No image files in {source} (looked for {sorted({'.bmp', '.jpg', '.png', '.tif'})} and "
                          "other image suffixes).")
    return files


def output_path(output: Path, images: list[str], overwrite: bool) -> Path:
    if output.suffix.lower() != ".csv":
        raise AllclsError(f"output={output} should be a .csv file.")
    if output.exists() and not overwrite:
        raise AllclsError(f"{output} exists: pass overwrite=true to replace it, or another output=.")
    folders = {str(Path(p).resolve().parent) for p in images}
    if str(output.resolve().parent) in folders:
        raise AllclsError(f"output={output} would be written next to the images: give a path outside their folders.")
    output.parent.mkdir(parents=True, exist_ok=True)
    return output


def load(settings: PredictSettings, workdir: Path) -> Model:
    """The model `model` names: a model URI (models:/..., runs:/...), or a run id, whose packaged
    model is used when it has one and which is packaged here on the fly (not logged) when not."""
    require_existing(settings.store.tracking_uri)
    tracker = Tracker(settings.store.tracking_uri)
    uri = settings.model
    if "://" not in uri and ":/" not in uri:
        if not tracker.has_artifact(uri, f"{MODEL_PATH}/MLmodel"):
            return package_here(tracker, uri, settings.coverage, workdir)
        uri = f"runs:/{uri}/{MODEL_PATH}"
    try:
        return registry.load(tracker, uri).model
    except registry.ModelUnavailable as error:
        raise AllclsError(f"Cannot load model {settings.model}: {error.reason}. Give a registered "
                          "model (models:/<name>@<alias> or /<version>), runs:/<run id>/model, or a run id.") from None


def package_here(tracker: Tracker, run_id: str, coverage: float, workdir: Path) -> Model:
    """A run packaged in memory for this prediction (nothing is logged into the run)."""
    log.info("Run %s holds no packaged model: packaging it here for this prediction (not logged).", run_id)
    source = resolve_source(tracker, run_id, None, workdir)
    spec, artifacts, _ = build(tracker, source, Referral(coverage, bootstrap=0), source.name, workdir)
    return Model.load(spec, [artifacts[spec.checkpoint_key(i)] for i in range(len(spec.members))])


def report(output: Path, written: int, skipped: list[tuple[str, str]]) -> None:
    if written:
        print(f"Wrote {written} prediction(s) to {output}.", flush=True)
    else:
        print("No image could be read: nothing was written.", flush=True)
    if skipped:
        print(f"Skipped {len(skipped)} file(s):", flush=True)
        for path, reason in skipped:
            print(f"  {path}: {reason}", flush=True)
