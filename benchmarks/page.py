"""The diagnosis page as a person meets it, in Debian's chromium (Selenium, as the page's browser test
drives it), against a store with a registered model (default: ./mlruns after `make demo`, whose
demo-ensemble@champion is the page's default there):

  - first page: from the first visit of a fresh server until the upload box is there (the model loaded);
  - new session: another session of the same server until its upload box is there, in a new tab of
    the browser (its scripts cached: a colleague's second tab) and in a new browser (nothing cached);
  - one image with its map: single-cell mode, one upload until its map and answer are drawn;
  - ten images, patient mode: a patient's ten cells until their decision, gallery with maps and report
    button are drawn;
  - for scale, new sessions of an empty Streamlit page (a title and an upload box) on the same machine.

The cells are synthetic C-NMC cells drawn at C-NMC's 450 x 450 px (allcls.data.synthetic), one
leukemic subject's. Medians over `--repeats` sessions (the first page over `--fresh-servers`
servers, each started for it), with the spread; each upload is a new set of files (the page
reuses the answers of a set it has seen). `--screenshots docs` saves the two modes as the docs
show them. Every server and browser it starts is stopped by its process id.

    python benchmarks/page.py [--store sqlite:///mlruns/mlflow.db] [--repeats 5] [--fresh-servers 3]
        [--screenshots docs]
    python benchmarks/page.py --tiny     # what `make test` runs: its own tiny model, in a temporary folder
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
SIZE = 450

from page_server import free_port, serving  # noqa: E402  (this folder's)
from results import median_spread, record  # noqa: E402  (this folder's results file)


def cells(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` leukemic synthetic cells of C-NMC's size, different for each seed."""
    from allcls.data.synthetic import SyntheticSpec, write_cnmc

    spec = SyntheticSpec(layout="cnmc", image_size=SIZE, subjects_per_class=3, cells_per_subject=count,
                         test_subjects_per_class=1, duplicate_pairs=0, seed=seed)
    write_cnmc(spec, folder)
    files = sorted((folder / "training_data").glob("fold_*/all/UID_*.bmp"))
    subject = files[0].name.split("_")[1]
    return [f for f in files if f.name.split("_")[1] == subject][:count]


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1300"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def wait_for(driver, check, timeout: float = 300) -> float:
    """Seconds until `check(driver)` holds."""
    from selenium.webdriver.support.ui import WebDriverWait

    start = time.perf_counter()
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(check)
    return time.perf_counter() - start


def upload_box(driver):
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, "input[type=file]")
    return found[0] if found else None


def choose_mode(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//label[.//p[text()='{label}']]").click()
    wait_for(driver, lambda d: d.find_element(By.XPATH, f"//label[.//p[text()='{label}']]//input").is_selected())
    time.sleep(0.3)  # the page's rerun for the new mode


def pictures_drawn(driver) -> bool:
    """Every picture on the page is loaded and drawn."""
    return bool(driver.execute_script(
        "const images = [...document.querySelectorAll('img')];"
        "return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);"))


def upload(driver, files: list[Path], done: str) -> float:
    """Seconds from handing the files to the page until `done` is on it."""
    start = time.perf_counter()
    upload_box(driver).send_keys("\n".join(str(f) for f in files))
    wait_for(driver, lambda d: done in body(d) and "Running..." not in body(d) and pictures_drawn(d))
    return time.perf_counter() - start


def screenshot(driver, file: Path) -> None:
    """The page as a tall window shows it (the decision, the gallery and more), then the window as it was."""
    driver.set_window_size(1500, 2000)
    time.sleep(1)
    wait_for(driver, pictures_drawn)
    driver.save_screenshot(str(file))
    driver.set_window_size(1500, 1300)


def session(driver, url: str, new_tab: bool = True) -> float:
    """Seconds from opening the page (in a new tab of `driver`) until its upload box is there."""
    if new_tab:
        driver.switch_to.new_window("tab")
    start = time.perf_counter()
    driver.get(url)
    wait_for(driver, upload_box)
    return time.perf_counter() - start


def first_page(url: str) -> float:
    """Seconds of a fresh server's first page (the model loaded), in a browser of its own."""
    driver = browser()
    try:
        return session(driver, url, new_tab=False)
    finally:
        driver.quit()


def measure(url: str, work: Path, repeats: int, screenshots: Path | None) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {name: [] for name in (
        "first page", "new session (new tab)", "new session (new browser)", "one image with its map",
        "ten images, patient mode")}
    driver = browser()
    try:
        figures["first page"].append(session(driver, url, new_tab=False))
        for repeat in range(repeats):
            figures["new session (new tab)"].append(session(driver, url))
            patient = cells(work / f"patient-{repeat}", 10, seed=100 + repeat)
            figures["ten images, patient mode"].append(upload(driver, patient, "Download the patient's report"))
            if screenshots is not None and repeat == 0:
                screenshot(driver, work / "patient.png")
            session(driver, url)
            choose_mode(driver, "Single cells")
            one = cells(work / f"one-{repeat}", 1, seed=200 + repeat)
            figures["one image with its map"].append(upload(driver, one, "Where it looks"))
            if screenshots is not None and repeat == 0:
                screenshot(driver, work / "cells.png")
    finally:
        driver.quit()
    for _ in range(repeats):  # a browser of its own: nothing of the page cached yet
        cold = browser()
        try:
            figures["new session (new browser)"].append(session(cold, url, new_tab=False))
        finally:
            cold.quit()
    if screenshots is not None:
        for name in ("patient", "cells"):
            Image.open(work / f"{name}.png").convert("RGB").save(screenshots / f"page-{name}.jpg", quality=85)
    return figures


# The least a Streamlit page costs a new session on the same machine: a title and an upload box.
FLOOR_PAGE = ('import streamlit as st\nst.title("An empty page")\n'
              'st.file_uploader("Files", accept_multiple_files=True)\n')


def floor(work: Path, env: dict, repeats: int) -> dict[str, list[float]]:
    """New sessions of FLOOR_PAGE, served as allcls-app serves the diagnosis page."""
    script = work / "floor.py"
    script.write_text(FLOOR_PAGE)
    port = free_port()
    command = [str(Path(sys.executable).parent / "streamlit"), "run", str(script), "--server.port", str(port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    with serving(command, port, work, env):
        url = f"http://127.0.0.1:{port}"
        figures: dict[str, list[float]] = {"empty page, new tab": [], "empty page, new browser": []}
        driver = browser()
        try:
            session(driver, url, new_tab=False)
            figures["empty page, new tab"] = [session(driver, url) for _ in range(repeats)]
        finally:
            driver.quit()
        for _ in range(repeats):
            cold = browser()
            try:
                figures["empty page, new browser"].append(session(cold, url, new_tab=False))
            finally:
                cold.quit()
    return figures


LABELS = {  # each figure's row in the table, and its goal (s)
    "first page": ("first page of a fresh server (the model loaded)", None),
    "new session (new tab)": ("new session, new tab", 1.0),
    "new session (new browser)": ("new session, new browser (nothing cached)", 1.0),
    "one image with its map": ("one image with its map (single cells)", 2.0),
    "ten images, patient mode": ("ten images, patient mode (decision, gallery with ten maps, report)", 6.0),
    "empty page, new tab": ("empty Streamlit page, new tab", None),
    "empty page, new browser": ("empty Streamlit page, new browser", None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fresh-servers", type=int, default=3, help="servers started for the first page's figure")
    parser.add_argument("--screenshots", type=Path, default=None, help="folder for page-patient.jpg, page-cells.jpg")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny model of its own (custom_cnn, 32 px), one session, one server, screenshots "
                             "into the temporary folder")
    args = parser.parse_args()
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        raise SystemExit("Needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver).")
    with tempfile.TemporaryDirectory(prefix="allcls-page-") as folder:
        work = Path(folder)
        if args.tiny:
            args.repeats, args.fresh_servers, args.screenshots = 1, 1, work / "screenshots"
            args.screenshots.mkdir()
            from commands import tiny_store
            args.store = tiny_store(work / "store")
        from mlflow import MlflowClient

        from allcls.serving.page.sidebar import PREFERRED_MODEL

        names = [m.name for m in sorted(MlflowClient(args.store).search_registered_models(),
                                        key=lambda m: -m.last_updated_timestamp)]
        if not names:
            raise SystemExit(f"No registered model in {args.store}: run `make demo` first, or pass --store.")
        model = PREFERRED_MODEL if PREFERRED_MODEL in names else names[0]  # the page's default (sidebar.py)
        env = {**os.environ, "MLFLOW_TRACKING_URI": args.store, "TQDM_DISABLE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}

        def app() -> tuple[list[str], str]:
            port = free_port()
            return ([str(Path(sys.executable).parent / "allcls-app"), "--server.port", str(port),
                     "--server.headless", "true"], f"http://127.0.0.1:{port}")

        command, url = app()
        with serving(command, int(url.rsplit(":", 1)[1]), work, env):
            figures = measure(url, work, args.repeats, args.screenshots)
        for _ in range(args.fresh_servers - 1):  # the first page again, each time of a server of its own
            command, url = app()
            with serving(command, int(url.rsplit(":", 1)[1]), work, env):
                figures["first page"].append(first_page(url))
        figures.update(floor(work, env, args.repeats))
    chromium = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
    found = {name: median_spread(values) for name, values in figures.items()}
    header = ["", "median s", "min s", "max s", "goal s"]
    rows = [[LABELS[name][0], f"{f['median']:.2f}", f"{f['min']:.2f}", f"{f['max']:.2f}",
             "" if LABELS[name][1] is None else f"{LABELS[name][1]:.1f}"] for name, f in found.items()]
    setting = {"store": "(its own tiny model)" if args.tiny else args.store, "model": model,
               "repeats": args.repeats, "fresh_servers": args.fresh_servers, "cell_size": SIZE, "browser": chromium,
               "screenshots": None if args.tiny or args.screenshots is None else str(args.screenshots)}
    record("page", {"seconds": found, "runs": {name: [round(v, 3) for v in values] for name, values in figures.items()},
                    "goals_s": {name: goal for name, (_, goal) in LABELS.items() if goal is not None}},
           setting, {"main": [header, *rows]})
    print(f"The diagnosis page in {chromium}, {SIZE} px cells, {args.repeats} sessions")
    print("\n".join(" | ".join(row) for row in [header, *rows]))


if __name__ == "__main__":
    main()
