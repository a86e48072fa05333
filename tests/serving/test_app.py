"""The diagnosis page: Streamlit's AppTest drives the real page script against a real MLflow store
with registered models (a single run and an ensemble); one slow test serves it with `python -m
allcls-app` and uploads an image through Debian's chromium."""

import base64
import hashlib
import os
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from streamlit.testing.v1 import AppTest

from helpers import PROJECT, console_script, free_port, served

PAGE = str(PROJECT / "allcls" / "serving" / "app.py")
CLASSES = ["hem", "all"]


@pytest.fixture(scope="module")
def models(store, registered) -> str:
    """The store, with two registered models (conftest): `cells` (one run) and `ensemble` (an
    ensemble of the sweep, the newest), both with 70% prediction sets, an out-of-distribution gate
    and alias `champion`."""
    return f"sqlite:///{store['root']}/mlruns/mlflow.db"


def an_image(store) -> Path:
    folder = next(Path(store["root"], "data", "synthetic").glob("cnmc-*"))
    return sorted((folder / "validation_data" / "C-NMC_test_prelim_phase_data").glob("*.bmp"))[0]


def a_patient(store, cells: int = 8) -> list[Path]:
    """One C-NMC subject's cells (a leukemic one), as the synthetic dataset writes them."""
    folder = next(Path(store["root"], "data", "synthetic").glob("cnmc-*"))
    files = sorted((folder / "training_data").glob("fold_*/all/UID_*.bmp"))
    subject = files[0].name.split("_")[1]
    return [f for f in files if f.name.split("_")[1] == subject][:cells]


def open_page(monkeypatch, uri: str, mode: str = "Single cells") -> AppTest:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import streamlit

    streamlit.cache_data.clear()  # as a new server would: the list of models is reused for a few seconds
    page = AppTest.from_file(PAGE, default_timeout=180)
    page.run()
    if page.radio:
        page.radio[0].set_value(mode).run()
    return page


def pick(page: AppTest, name: str) -> AppTest:
    page.sidebar.selectbox[0].set_value(name).run()
    assert not page.exception, page.exception
    return page


def expected(uri: str, name: str, data: bytes) -> pd.Series:
    """What the registered model itself answers for these bytes: the page must show the same."""
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(
        pd.DataFrame({"image": [base64.b64encode(data).decode()]})).iloc[0]


def test_an_upload_gets_its_class_in_words_probability_set_and_map_and_a_bad_file_gets_a_reason(store, models,
                                                                                                monkeypatch):
    page = pick(open_page(monkeypatch, models), "cells")
    assert page.sidebar.selectbox[1].value == "@champion"
    assert "Not a diagnostic device" in page.expander[0].children[0].value  # the model card
    about = " ".join(m.value for m in page.sidebar.markdown)
    assert "**Backbone** custom_cnn" in about and "balanced accuracy" in about and "70% coverage" in about
    assert "**Out-of-distribution gate** on" in about
    assert "**all**: leukemic B-lymphoblast (synthetic)" in about and "**hem**: normal B-lymphoid cell" in about
    assert any("SYNTHETIC cells" in e.value for e in page.sidebar.error)
    trained = " ".join(c.value for c in page.sidebar.caption)
    assert "Trained on SYNTHETIC cells" in trained and " patients, tuned on " in trained and "by subject" in trained
    data = an_image(store).read_bytes()
    page.file_uploader[0].set_value([("cell.bmp", data, "image/bmp"), ("notes.png", b"not an image", "image/png")])
    page.run()
    assert not page.exception, page.exception
    answer = expected(models, "cells", data)
    headline = next(m.value for m in page.markdown if m.value.startswith("### "))
    bars = [bar.proto.text for bar in page.get("progress")]  # the probability of each class, 0-100 %
    assert bars == [f"{c}: {answer[f'prob_{c}']:.1%}" for c in CLASSES]
    assert len(page.get("image")) == 2  # the upload and its map
    referral = [w.value for w in page.warning if w.value.startswith("Refer to a human")]
    answered = [s.value for s in [*page.success, *page.info] if "prediction set is" in s.value]
    if answer["refer"]:  # the label is not shown as the answer, the reasons are
        assert headline == "### Refer to a human" and referral and not answered
        assert any(c.value.startswith(f"Not an answer: the model's own reading is {answer['label']}")
                   for c in page.caption)
    else:
        assert headline.startswith(f"### Predicted: {answer['label']} (")
        assert f"{answer[f'prob_{answer.label}']:.1%}: probability" in headline and answered and not referral
    assert [e.value for e in page.main.error] == [
        "notes.png cannot be used: not an image file, or not a BMP, PNG, JPEG, TIFF, WebP or GIF image."]
    assert any(c.value.startswith("Where it looks: The model looks mostly at the ") for c in page.caption)
    assert not [m for m in page.markdown if "Members' votes" in m.value]
    table = page.main.dataframe[0].value
    assert table["file"].tolist() == ["cell.bmp", "notes.png"] and table["label"].tolist()[0] == answer["label"]
    assert table["set"].tolist()[0] == answer["set"] and table["refer_reason"].tolist() == [
        answer["refer_reason"], "unreadable"]


def test_a_photograph_is_referred_as_out_of_distribution_with_its_probabilities_kept(store, models, monkeypatch):
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()[:256, 256:]).save(buffer, "PNG")
    page = pick(open_page(monkeypatch, models), "cells")
    page.checkbox[1].uncheck().run()  # no Grad-CAM: quicker
    page.file_uploader[0].set_value(("holiday.png", buffer.getvalue(), "image/png"))
    page.run()
    assert not page.exception, page.exception
    assert [m.value for m in page.markdown if m.value.startswith("### ")] == ["### Refer to a human"]
    assert any("does not look like the cells this model was trained on" in w.value for w in page.warning)
    table = page.main.dataframe[0].value
    assert "out of distribution" in table["refer_reason"][0] and table["refer"][0]


def test_an_ensemble_shows_each_members_vote_and_map_their_agreement_and_tta(store, models, monkeypatch):
    page = pick(open_page(monkeypatch, models), "ensemble")
    data = an_image(store).read_bytes()
    page.checkbox[0].check().run()  # test-time augmentation
    page.file_uploader[0].set_value(("cell.bmp", data, "image/bmp"))
    page.run()
    assert not page.exception, page.exception
    votes = next(m.value for m in page.markdown if m.value.startswith("Members' votes:"))
    members = [c for c in page.main.dataframe[0].value.columns if c.startswith("member_")]
    assert len(members) >= 2 and all(m.removeprefix("member_") in votes for m in members)
    assert any(e.label == "Each member's Grad-CAM" for e in page.expander)
    assert len(page.get("image")) == 2 + len(members)
    looks = [e.value for e in [*page.caption, *page.warning] if e.value.startswith("Where it looks: ")]
    assert len(looks) == 1 and f" of {len(members)} members look mostly at the " in looks[0]
    assert any(c.value.startswith("Test-time augmentation: ") and c.value.endswith("of 6 views agree on "
               + page.main.dataframe[0].value["label"][0] + ".") for c in page.caption)


def test_a_patient_gets_a_decision_first_then_cells_in_order_one_click_from_detail_and_is_recorded(
        store, models, monkeypatch, tmp_path):
    import zipfile

    cells = a_patient(store)
    archive = tmp_path / "patient.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for cell in cells[2:]:
            zipped.write(cell, f"patient/{cell.name}")
        zipped.writestr("__MACOSX/patient/._x.bmp", b"resource fork")
    page = pick(open_page(monkeypatch, models, "A patient (several cells)"), "ensemble")
    page.file_uploader[0].set_value([(c.name, c.read_bytes(), "image/bmp") for c in cells[:2]]
                                    + [("patient.zip", archive.read_bytes(), "application/zip")])
    page.run()
    assert not page.exception, page.exception
    header = page.header[0].value
    assert header.startswith("Patient: ") and (header == "Patient: refer to a human" or " (leukemic" in header
                                               or " (normal" in header)
    decision = [*page.warning, *page.success, *page.info]
    assert any(f"of {len(cells)} cells used" in d.value for d in decision)
    looks = [b for b in page.button if b.label == "Look closer"]
    assert len(looks) == len(cells)  # one per cell, the archive's hidden file left out
    names = [c.value.replace("\\", "") for c in page.caption if c.value.endswith(".bmp")]  # as Markdown source
    assert sorted(names) == sorted(c.name for c in cells)
    rows = page.main.dataframe[0].value  # the table of all cells, in the gallery's order
    referred = rows["refer"].tolist()
    assert referred == sorted(referred, reverse=True)  # referred cells come first
    looks[1].click().run()
    assert not page.exception, page.exception
    assert page.subheader[-1].value.replace("\\", "") == rows["file"][1]  # that cell's section, below the gallery
    assert [d.label for d in page.get("download_button")] == [
        "Download the patient's report (HTML)", "Download the cells (CSV)"]
    from allcls.tracking import audit
    from allcls.tracking.tracker import Tracker

    traces = audit.answers(Tracker(models), store["experiment_id"], "tags.`allcls.model` = 'ensemble'")
    assert traces and traces[0].info.tags["allcls.surface"] == "page"
    assert traces[0].info.tags["allcls.aliases"] == "champion" and traces[0].info.tags["allcls.version"] == "1"
    sent = traces[0].data.spans[0].inputs["sha256"]
    assert len(sent) == len(cells) and hashlib.sha256(cells[0].read_bytes()).hexdigest() in sent


def test_a_store_without_models_says_how_to_register_one(tmp_path, monkeypatch):
    page = open_page(monkeypatch, f"sqlite:///{tmp_path}/mlflow.db")
    assert not page.exception and not page.error, [e.value for e in page.error]
    assert "No registered model" in page.info[0].value and "allcls-package" in page.info[0].value


def test_an_unreachable_store_is_named_with_the_fix(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    page = open_page(monkeypatch, uri)
    assert not page.exception
    assert len(page.error) == 1 and page.error[0].value.startswith(f"Cannot reach the MLflow store {uri}")
    assert "MLFLOW_TRACKING_URI" in page.error[0].value


def test_a_version_whose_files_are_gone_is_reported_not_crashed(store, models, monkeypatch):
    client = MlflowClient(models)
    client.create_registered_model("page-moved")
    try:
        client.create_model_version("page-moved", f"runs:/{store['members'][1]}/no-such-model", store["members"][1])
        page = pick(open_page(monkeypatch, models), "page-moved")
        assert len(page.error) == 1 and "cannot be loaded" in page.error[0].value
        assert "pick another one" in page.error[0].value and not page.file_uploader
    finally:
        client.delete_registered_model("page-moved")  # the newest model is the page's default


# --- the page in a real browser ---------------------------------------------------------------------

def browser_or_reason() -> str | None:
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    return ("Debian's chromium and chromium-driver are needed: `apt-get update && apt-get install -y chromium "
            "chromium-driver` (make test installs them when run as root)")


@pytest.mark.slow
def test_a_patient_in_chromium_decision_first_a_cell_in_detail_and_a_report_naming_the_version(store, models,
                                                                                              tmp_path):
    if (reason := browser_or_reason()) is not None:
        pytest.fail(reason)  # never skipped: the page is not tested without a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": models, "TQDM_DISABLE": "1"}
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    cells = a_patient(store, 6)
    with served([console_script("allcls-app"), "--server.port", str(port)],
                f"http://127.0.0.1:{port}/_stcore/health", tmp_path / "page.log", timeout=120, cwd=tmp_path, env=env):
        browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        try:
            browser.get(f"http://127.0.0.1:{port}")
            wait = WebDriverWait(browser, 180)
            text = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
            # The page opens with the most recently updated model, which other tests' registrations change:
            # the ensemble is chosen as a user would, by typing its name into the sidebar's list.
            chooser = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR,
                                                           "[data-testid=stSidebar] [data-testid=stSelectbox] input"))
            chooser[0].send_keys("ensemble", Keys.ENTER)
            wait.until(lambda b: "What this model is: ensemble @champion" in text())
            upload = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0]
            upload.send_keys("\n".join(str(c) for c in cells))  # the patient mode is the page's first
            wait.until(lambda b: "Download the patient's report" in text())
            shown = text()
            looks = browser.find_elements(By.XPATH, "//button[.//p[text()='Look closer']]")
            click = lambda element: browser.execute_script("arguments[0].scrollIntoView(); arguments[0].click();",  # noqa: E731
                                                           element)
            click(looks[2])
            wait.until(lambda b: "Where it looks" in text())
            detail = text()
            click(browser.find_element(By.XPATH, "//button[.//p[text()=\"Download the patient's report (HTML)\"]]"))
            wait.until(lambda b: list(downloads.glob("*.html")))
            browser.save_screenshot(str(tmp_path / "page.png"))
        finally:
            browser.quit()
    version = MlflowClient(models).get_model_version_by_alias("ensemble", "champion").version
    assert "Not a diagnostic device" in shown and len(looks) == len(cells)
    assert shown.index("Patient: ") < shown.index("Cells, referred and most suspicious first")
    assert f"of {len(cells)} cells used" in shown
    assert sum(c.name in shown for c in cells) == len(cells)
    assert "Members' votes" in detail and ("Predicted: " in detail or "Refer to a human" in detail)
    report = next(downloads.glob("*.html")).read_text()
    assert f"ensemble version {version} (@champion)" in report and "Not a diagnostic device" in report
    assert (tmp_path / "page.png").stat().st_size > 10_000
