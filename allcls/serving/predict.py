"""Batch prediction: a packaged model (or any run, packaged on the fly) over a folder, a file or a
glob of images, into one CSV:

    allcls-predict model=models:/all-ensemble@champion input=/data/new_cells output=predictions.csv

One row per image (`path`, then the model's row: `label, prob_<class>..., set, refer, refer_reason,
ood_score`, each member's label for an ensemble, `error`), written batch by batch, so an interruption
keeps every finished row. Odd images are converted as training converts them; an unreadable one
keeps its row, with the reason in `error` (and listed at the end). With `group_by=subject` (the
subject in C-NMC file names) or `group_by=folder` (one folder per patient), a patient table with one
decision per patient is written beside it (`<output>_patients.csv`). The CSVs never go next to the
user's images, and existing ones are kept unless `overwrite=true`.
"""

from __future__ import annotations

import glob
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from allcls.data.images import is_image_file
from allcls.data.readers import cnmc_subject
from allcls.errors import AllclsError
from allcls.evaluation.settings import RuleSettings
from allcls.evaluation.sources import resolve_source
from allcls.inference.decoding import decode_files
from allcls.inference.model import Model
from allcls.inference.spec import OOD_KEY
from allcls.inference.views import views_for
from allcls.machine import keep_freed_memory
from allcls.progress import progress
from allcls.serving.package import build
from allcls.serving.settings import PredictSettings
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
    output = output_path(Path(settings.output).expanduser(), images, settings.overwrite, str(settings.input))
    if settings.group_by is not None and patients_path(output).exists() and not settings.overwrite:
        raise AllclsError(f"{patients_path(output)} exists: pass overwrite=true to replace it, or another output=.")
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
                rows.to_csv(partial, mode="a", header=written == 0, index=False)
                written += len(rows)
                bar.update(len(paths))
        readable = written - len(skipped)
        if readable:
            partial.replace(output)
            if settings.group_by is not None:
                write_patients(model, output, settings.group_by)
        else:
            partial.unlink(missing_ok=True)
    report(output, readable, skipped)
    return output


def patient_of(path: str, group_by: str) -> str | None:
    """A file's patient: the subject of a C-NMC file name, or its folder."""
    return cnmc_subject(Path(path).name) if group_by == "subject" else str(Path(path).parent)


def patients_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_patients.csv")


def write_patients(model: Model, output: Path, group_by: str) -> Path:
    """One decision per patient from the cell table just written, beside it."""
    cells = pd.read_csv(output, keep_default_na=False, na_values=[""])
    cells["error"] = cells["error"].fillna("")
    cells["refer_reason"] = cells["refer_reason"].fillna("")
    patients = [patient_of(p, group_by) for p in cells["path"]]
    known = [p is not None for p in patients]
    target = patients_path(output)
    if not any(known):
        print("No file name carries a C-NMC subject id (UID_<subject>_...): no patient table. Use group_by=folder "
              "with one folder per patient.", flush=True)
        return target
    table = model.patient_rows(cells[known].reset_index(drop=True), [p for p in patients if p is not None])
    table.to_csv(target, index=False)
    left_out = len(known) - sum(known)
    print(f"Wrote {len(table)} patient decision(s) to {target}"
          + (f" ({left_out} file(s) without a subject id in their name left out)" if left_out else "") + ".",
          flush=True)
    return target


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


def output_path(output: Path, images: list[str], overwrite: bool, source: str) -> Path:
    """The CSV's path, checked before any model is loaded: a .csv, not an existing file (unless
    `overwrite`), not inside the input's folder tree (predict never writes among the user's images),
    in a folder that can be written."""
    if output.suffix.lower() != ".csv":
        raise AllclsError(f"output={output} should be a .csv file.")
    if output.exists() and not overwrite:
        raise AllclsError(f"{output} exists: pass overwrite=true to replace it, or another output=.")
    target = output.resolve()
    given = Path(source).expanduser()
    trees = {given.resolve()} if given.is_dir() else {Path(p).resolve().parent for p in images}
    inside = next((tree for tree in trees if target.is_relative_to(tree)), None)
    if inside is not None:
        raise AllclsError(f"output={output} is inside the input's folder {inside}: predict never writes among the "
                          "images; give a path outside it.")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=output.parent, prefix=".allcls-write-check-").close()  # made, then removed
    except OSError as error:
        raise AllclsError(f"Cannot write into {output.parent} ({error.strerror or error}): give an output= in a "
                          "folder you can write to.") from None
    return output


def load(settings: PredictSettings, workdir: Path) -> Model:
    """The model `model` names: a model URI (models:/..., runs:/...), or a run id, whose packaged
    model is used when it has one and which is packaged here on the fly (not logged) when not."""
    require_existing(settings.store.tracking_uri)
    tracker = Tracker(settings.store.tracking_uri)
    uri = settings.model
    if "://" not in uri and ":/" not in uri and not Path(uri).expanduser().is_dir():  # a run id
        tracker.get_run(uri, "give a run id of this store, or a model URI (models:/<name>@<alias>)")
        if not tracker.has_artifact(uri, f"{MODEL_PATH}/MLmodel"):
            return package_here(tracker, uri, settings.coverage, workdir, settings.dataset_root, settings.runtime)
        uri = f"runs:/{uri}/{MODEL_PATH}"
    try:
        return registry.load(tracker, uri, settings.runtime).model
    except registry.ModelUnavailable as error:
        raise AllclsError(f"Cannot load model {settings.model}: {error.reason}. Give a registered "
                          "model (models:/<name>@<alias> or /<version>), runs:/<run id>/model, or a run id.") from None


def package_here(tracker: Tracker, run_id: str, coverage: float, workdir: Path, dataset_root: str | None = None,
                 runtime: str | None = None) -> Model:
    """A run packaged in memory for this prediction (nothing is logged into the run); exported to
    ONNX only when `runtime=onnx` asks for it."""
    log.info("Run %s holds no packaged model: packaging it here for this prediction (not logged).", run_id)
    source = resolve_source(tracker, run_id, None, workdir)
    spec, artifacts, _ = build(tracker, source, RuleSettings(coverage), source.name, workdir, dataset_root,
                               bootstrap=0, card=False, export="onnx" if runtime == "onnx" else "none",
                               runtime=runtime or "torch")
    members = range(len(spec.members))
    return Model.load(spec, [artifacts[spec.checkpoint_key(i)] for i in members], gate=artifacts.get(OOD_KEY),
                      runtime=spec.runtime, graphs=[artifacts[spec.graph_key(i)] for i in members
                                                    if spec.graph_key(i) in artifacts])


def report(output: Path, readable: int, skipped: list[tuple[str, str]]) -> None:
    if readable:
        print(f"Wrote {readable + len(skipped)} row(s) to {output}: {readable} prediction(s)"
              + (f", {len(skipped)} unreadable file(s) with the reason in `error`." if skipped else "."), flush=True)
    else:
        print("No image could be read: nothing was written.", flush=True)
    if skipped:
        print(f"Could not read {len(skipped)} file(s):", flush=True)
        for path, reason in skipped:
            print(f"  {path}: {reason}", flush=True)
