"""The serving commands: `allcls-package` (a run or an ensemble as a registered MLflow model, with
its card; conf/package.yaml), `allcls-predict` (a folder of images into one CSV; conf/predict.yaml)
and `allcls-app` (the diagnosis page)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from allcls.config.entry import hydra_entry, prepare_process

package = hydra_entry("package", "allcls.serving.package:package")
predict = hydra_entry("predict", "allcls.serving.predict:predict")

PAGE = Path(__file__).resolve().with_name("app.py")


USAGE = """usage: allcls-app [streamlit options, e.g. --server.port 8600 --server.address 0.0.0.0]

The diagnosis page: pick a registered model, give it a patient's cells (files, or a folder as a
zip) for the patient's decision first and the cells in the order they deserve a look, or single
cells, each with its class in words or a referral and why, its prediction set, a readable Grad-CAM
and, for an ensemble, each member's vote; a patient's report downloads as HTML. Every answer is
recorded as an MLflow trace in the model's experiment (ALLCLS_AUDIT=off: not). It reads the
MLflow store of $MLFLOW_TRACKING_URI, else mlruns/ in the folder it is started from, and serves
http://127.0.0.1:8501 unless told otherwise. Every other option is Streamlit's
(`streamlit run --help`)."""


def app() -> None:
    """`allcls-app [streamlit options]`: serve the page, on 127.0.0.1 unless told otherwise."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(USAGE)
        return
    from streamlit.web import cli

    prepare_process()
    # A server that goes away later should fail a request in seconds, not after minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # OpenMP's idle threads sleep at once instead of spinning: between the many small kernels of a
    # page's models they otherwise keep both cores of a small machine busy, and the browser, the
    # server and torch itself wait (one image with its map: 2.7 s, passive: 1.5 s; benchmarks/page.py).
    # Set before torch loads, which this module does not import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    options = sys.argv[1:]
    # 127.0.0.1; no browser or e-mail prompt; no developer menu (Deploy, rerun) on a clinician's page
    for name, default in (("--server.address", "127.0.0.1"), ("--server.headless", "true"),
                          ("--client.toolbarMode", "viewer")):
        if not any(option.startswith(name) for option in options):
            options = [name, default, *options]
    sys.argv = ["streamlit", "run", str(PAGE), "--browser.gatherUsageStats", "false", *options]
    sys.exit(cli.main())
