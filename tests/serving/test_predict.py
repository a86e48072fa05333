"""Batch prediction with a packaged model (or a run packaged on the fly): one CSV row per image, odd
images converted, unreadable ones kept with their reason and listed, a patient table on request,
nothing written next to the images, and an existing output kept."""

import shutil
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest

from allcls.errors import AllclsError
from allcls.inference.calibration import calibrated
from allcls.serving.predict import predict

from helpers import compose_config


@pytest.fixture(scope="module")
def model_uri(registered) -> str:
    return registered["cells"]


@pytest.fixture
def odd_folder(store, tmp_path):
    """Real cells, plus every kind of odd or broken file a folder of images can hold."""
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    cells = sorted(next(Path(store["root"], "data", "synthetic").glob("cnmc-*")).rglob("*.bmp"))[:3]
    for cell in cells:
        shutil.copy(cell, folder / cell.name)
    cv2.imwrite(str(folder / "sub" / "gray.png"), np.full((40, 40), 120, np.uint8))
    cv2.imwrite(str(folder / "rgba.png"), np.full((40, 40, 4), 200, np.uint8))
    cv2.imwrite(str(folder / "sixteen.png"), np.full((40, 40, 3), 40000, np.uint16))
    cv2.imwrite(str(folder / "tiny.png"), np.full((2, 2, 3), 90, np.uint8))
    cv2.imwrite(str(folder / "wide.png"), np.full((20, 10_000, 3), 90, np.uint8))
    cv2.imwrite(str(folder / "huge.png"), np.zeros((10_000, 10_000), np.uint8))  # 100 megapixels
    # A Radiance HDR file under a .png name: OpenCV decodes it, PIL cannot read its header (the way
    # a 64-megapixel image got past the size limit): refused whatever its size.
    cv2.imwrite(str(folder / "radiance.hdr"), np.full((40, 40, 3), 0.5, np.float32))
    (folder / "radiance.hdr").rename(folder / "radiance.png")
    (folder / "empty.bmp").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    (folder / "readme.txt").write_text("not looked at: no image suffix")
    return folder


def predict_cfg(store, tmp_path, *overrides):
    return compose_config("predict", store["root"], list(overrides), output_dir=tmp_path / "job")


def test_a_folder_with_odd_files_gives_a_row_per_readable_image_and_lists_the_rest(store, model_uri, odd_folder,
                                                                                   tmp_path, capsys):
    output = predict(predict_cfg(store, tmp_path, f"model={model_uri}", f"input={odd_folder}",
                                 f"output={tmp_path / 'out' / 'predictions.csv'}"))
    table = pd.read_csv(output, keep_default_na=False, na_values={"prob_hem": [""], "prob_all": [""]})
    readable = {"gray.png", "rgba.png", "sixteen.png", "tiny.png", "wide.png"} | {
        p.name for p in odd_folder.glob("*.bmp") if p.stat().st_size}
    unreadable = {"huge.png", "empty.bmp", "notes.jpg", "radiance.png"}
    assert {Path(p).name for p in table["path"]} == readable | unreadable
    assert list(table.columns[:8]) == ["path", "label", "prob_hem", "prob_all", "set", "refer", "refer_reason",
                                       "ood_score"]
    assert table.columns[-1] == "error"
    broken = table[table["path"].map(lambda p: Path(p).name in unreadable)]
    assert broken["refer_reason"].eq("unreadable").all() and broken["error"].ne("").all()
    good = table.drop(broken.index)
    assert np.allclose(good[["prob_hem", "prob_all"]].sum(axis=1), 1) and good["error"].eq("").all()
    printed = capsys.readouterr().out
    assert "Could not read 4 file(s)" in printed and "radiance.png: not an image file" in printed
    assert "huge.png: 10000 x 10000 pixels" in printed and "empty.bmp: the file is empty" in printed
    assert "notes.jpg: not an image file" in printed and "readme.txt" not in printed


def test_tta_and_a_run_id_packaged_on_the_fly(store, odd_folder, tmp_path):
    output = predict(predict_cfg(store, tmp_path, f"model={store['members'][2]}", f"input={odd_folder}/*.bmp",
                                 f"output={tmp_path / 'tta.csv'}", "tta=true", "coverage=0.8"))
    table = pd.read_csv(output)
    assert len(table) == 4 and table["label"].dropna().isin(["hem", "all"]).all()  # and empty.bmp's row
    plain = pd.read_csv(predict(predict_cfg(store, tmp_path, f"model={store['members'][2]}",
                                            f"input={odd_folder}/*.bmp", f"output={tmp_path / 'plain.csv'}",
                                            "coverage=0.8")))
    read = table["error"].isna()  # the rows of images that could be read
    assert read.sum() == 3 and (plain["path"] == table["path"]).all()
    # the six views' mean is not the plain view's answer (a model that ignored tta=true would give it)
    assert not np.allclose(table.loc[read, "prob_all"], plain.loc[read, "prob_all"], atol=1e-6)


def test_one_decision_per_patient_from_c_nmc_file_names(store, model_uri, tmp_path, capsys):
    folder = next(Path(store["root"], "data", "synthetic").glob("cnmc-*")) / "training_data" / "fold_2"
    output = predict(predict_cfg(store, tmp_path, f"model={model_uri}", f"input={folder}", "group_by=subject",
                                 f"output={tmp_path / 'cells.csv'}"))
    cells = pd.read_csv(output, keep_default_na=False, na_values={"prob_hem": [""], "prob_all": [""],
                                                                 "ood_score": [""]})
    patients = pd.read_csv(tmp_path / "cells_patients.csv", keep_default_na=False,
                           na_values={"prob_hem": [""], "prob_all": [""], "ood_score": [""]})
    subjects = cells["path"].map(lambda p: Path(p).name.split("_")[1].upper())
    assert sorted(patients["patient"]) == sorted(set(subjects))
    mlflow.set_tracking_uri(f"sqlite:///{store['root']}/mlruns/mlflow.db")
    rule = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().spec.decision.patient
    assert rule is not None and rule.subjects == 6  # fitted on the validation subjects
    assert list(patients.columns[:4]) == ["patient", "cells", "cells_used", "cells_referred"]
    for row in patients.itertuples():
        own = cells[subjects == row.patient]
        used = own[~own["refer_reason"].str.contains("out of distribution")]
        assert row.cells == len(own) and row.cells_used == len(used)
        mean = used[["prob_hem", "prob_all"]].mean().to_numpy()[None]  # the mean of its cells in distribution
        assert row.prob_all == pytest.approx(calibrated(mean, rule.temperature)[0, 1])
    assert "patient decision(s)" in capsys.readouterr().out


def test_an_existing_output_is_kept_and_nothing_goes_among_the_images(store, model_uri, odd_folder, tmp_path):
    existing = tmp_path / "kept.csv"
    existing.write_text("mine\n")
    with pytest.raises(AllclsError, match="exists: pass overwrite=true"):
        predict(predict_cfg(store, tmp_path, f"model={model_uri}", f"input={odd_folder}", f"output={existing}"))
    assert existing.read_text() == "mine\n"
    for inside in (odd_folder / "predictions.csv", odd_folder / "results" / "predictions.csv"):
        with pytest.raises(AllclsError, match=f"is inside the input's folder {odd_folder}: predict never writes"):
            predict(predict_cfg(store, tmp_path, f"model={model_uri}", f"input={odd_folder}", f"output={inside}"))
    assert not (odd_folder / "results").exists()
    with pytest.raises(AllclsError, match="Cannot write into .*kept.csv .*give an output= in a folder you can"):
        predict(predict_cfg(store, tmp_path, f"model={model_uri}", f"input={odd_folder}",
                            f"output={existing / 'x.csv'}"))  # a folder that cannot be made: a file is there
    with pytest.raises(AllclsError, match="No MLflow run '0123456789abcdef0123456789abcdef' in sqlite:///"):
        predict(predict_cfg(store, tmp_path, "model=0123456789abcdef0123456789abcdef", f"input={odd_folder}",
                            f"output={tmp_path / 'x.csv'}"))
    with pytest.raises(AllclsError, match="neither a folder, nor a file, nor a glob"):
        predict(predict_cfg(store, tmp_path, f"model={model_uri}", "input=/no/such/place", "output=x.csv"))
    with pytest.raises(AllclsError, match="Cannot load model models:/nobody@champion"):
        predict(predict_cfg(store, tmp_path, "model=models:/nobody@champion", f"input={odd_folder}",
                            f"output={tmp_path / 'x.csv'}"))


def test_a_folder_without_a_store_is_refused_and_none_is_created(odd_folder, tmp_path):
    """Run where there is no mlruns/ (and MLFLOW_TRACKING_URI is not set), prediction names the store
    it looked for and the fix, and leaves no empty store behind."""
    elsewhere = tmp_path / "elsewhere"
    cfg = compose_config("predict", elsewhere, ["model=models:/cells@champion", f"input={odd_folder}",
                                                f"output={tmp_path / 'out.csv'}"], output_dir=tmp_path / "job")
    with pytest.raises(AllclsError, match=f"No MLflow store at sqlite:///{elsewhere}/mlruns/mlflow.db: run this from"):
        predict(cfg)
    assert not (elsewhere / "mlruns").exists() and not (tmp_path / "out.csv").exists()
