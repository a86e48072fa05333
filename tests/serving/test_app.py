"""The diagnosis page: Streamlit's AppTest drives the real page script against a real MLflow store
with registered models (a single run and an ensemble); one slow test serves it with `python -m
allcls-app` and uploads an image through Debian's chromium."""

import base64
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


def open_page(monkeypatch, uri: str) -> AppTest:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    page = AppTest.from_file(PAGE, default_timeout=180)
    page.run()
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


def test_an_upload_gets_its_class_probability_set_and_gradcam_and_a_bad_file_gets_a_reason(store, models, monkeypatch):
    page = pick(open_page(monkeypatch, models), "cells")
    assert page.sidebar.selectbox[1].value == "@champion"
    assert "Not a diagnostic device" in page.expander[0].children[0].value  # the model card
    about = " ".join(m.value for m in page.sidebar.markdown)
    assert "**Backbone** custom_cnn" in about and "balanced accuracy" in about and "70% coverage" in about
    assert "**Out-of-distribution gate** on" in about
    data = an_image(store).read_bytes()
    page.file_uploader[0].set_value([("cell.bmp", data, "image/bmp"), ("notes.png", b"not an image", "image/png")])
    page.run()
    assert not page.exception, page.exception
    answer = expected(models, "cells", data)
    headline = next(m.value for m in page.markdown if m.value.startswith("### "))
    assert len(page.get("vega_lite_chart")) == 1  # the probability chart
    assert len(page.get("image")) == 2  # the upload and its Grad-CAM
    referral = [w.value for w in page.warning if w.value.startswith("Refer to a human")]
    alone = [s.value for s in page.success if "prediction set is" in s.value]
    if answer["refer"]:  # the label is not shown as the answer, the reasons are
        assert headline == "### Refer to a human" and referral and not alone
        assert any(c.value.startswith(f"Not an answer: the model's own reading is {answer['label']}")
                   for c in page.caption)
    else:
        assert headline.startswith(f"### Predicted: {answer['label']}")
        assert f"{answer[f'prob_{answer.label}']:.1%}: probability" in headline and alone and not referral
    assert [e.value for e in page.error] == [
        "notes.png cannot be used: not an image file, or not a BMP, PNG, JPEG, TIFF, WebP or GIF image."]
    assert not [m for m in page.markdown if "Members' votes" in m.value]
    table = page.main.dataframe[0].value
    assert table["file"].tolist() == ["cell.bmp"] and table["label"].tolist() == [answer["label"]]
    assert table["set"].tolist() == [answer["set"]] and table["refer_reason"].tolist() == [answer["refer_reason"]]


def test_a_photograph_is_referred_as_out_of_distribution_with_its_probabilities_kept(store, models, monkeypatch):
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()[:256, 256:]).save(buffer, "PNG")
    page = pick(open_page(monkeypatch, models), "cells")
    page.file_uploader[0].set_value(("holiday.png", buffer.getvalue(), "image/png"))
    page.checkbox[1].uncheck().run()  # no Grad-CAM: quicker
    assert not page.exception, page.exception
    assert [m.value for m in page.markdown if m.value.startswith("### ")] == ["### Refer to a human"]
    assert any("does not look like the cells this model was trained on" in w.value for w in page.warning)
    table = page.main.dataframe[0].value
    assert "out of distribution" in table["refer_reason"][0] and table["refer"][0]


def test_an_ensemble_shows_each_members_vote_and_map_and_tta_agreement(store, models, monkeypatch):
    page = pick(open_page(monkeypatch, models), "ensemble")
    data = an_image(store).read_bytes()
    page.file_uploader[0].set_value(("cell.bmp", data, "image/bmp"))
    page.checkbox[0].check().run()  # test-time augmentation
    assert not page.exception, page.exception
    votes = next(m.value for m in page.markdown if m.value.startswith("Members' votes:"))
    members = [c for c in page.main.dataframe[0].value.columns if c.startswith("member_")]
    assert len(members) >= 2 and all(m.removeprefix("member_") in votes for m in members)
    assert any(e.label == "Each member's Grad-CAM" for e in page.expander)
    assert len(page.get("image")) == 2 + len(members)
    assert any(c.value.startswith("Test-time augmentation: ") and c.value.endswith("of 6 views agree on "
               + page.main.dataframe[0].value["label"][0] + ".") for c in page.caption)


def test_a_store_without_models_says_how_to_register_one(tmp_path, monkeypatch):
    page = open_page(monkeypatch, f"sqlite:///{tmp_path}/mlflow.db")
    assert not page.exception and not page.error
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
def test_the_served_page_predicts_an_uploaded_image_in_chromium(store, models, tmp_path):
    if (reason := browser_or_reason()) is not None:
        pytest.fail(reason)  # never skipped: the page is not tested without a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": models, "TQDM_DISABLE": "1"}
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(flag)
    with served([console_script("allcls-app"), "--server.port", str(port)],
                f"http://127.0.0.1:{port}/_stcore/health", tmp_path / "page.log", timeout=120, cwd=tmp_path, env=env):
        browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        try:
            browser.get(f"http://127.0.0.1:{port}")
            wait = WebDriverWait(browser, 180)
            upload = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0]
            upload.send_keys(str(an_image(store)))
            wait.until(lambda b: "Download the results" in b.find_element(By.TAG_NAME, "body").text)  # drawn fully
            text = browser.find_element(By.TAG_NAME, "body").text
            browser.save_screenshot(str(tmp_path / "page.png"))
        finally:
            browser.quit()
    answer = expected(models, "ensemble", an_image(store).read_bytes())  # the newest model is the default
    if answer["refer"]:
        assert "Refer to a human" in text and f"Not an answer: the model's own reading is {answer['label']}" in text
    else:
        assert f"Predicted: {answer['label']}" in text and "probability" in text
    assert "Members' votes" in text and "Not a diagnostic device" in text
    assert (tmp_path / "page.png").stat().st_size > 10_000
