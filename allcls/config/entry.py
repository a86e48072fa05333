"""How every entry point starts: the process's defaults, conf/'s resolvers, Hydra on the configs
shipped inside the package (a user's own with `--config-dir`), and a user's mistake as one line
with exit code 2. Console scripts (`allcls-train`, ...) and the root shims (`python train.py`) both
come here; nothing below the entry points changes global state."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra

from allcls.config.mistakes import HYDRA_MISTAKES, one_line
from allcls.config.resolvers import register_resolvers
from allcls.errors import AllclsError, reports_user_errors, user_message

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

PROCESS_DEFAULTS = {
    # albumentations 2 asks PyPI for a newer release when it is imported; machines here are offline
    "NO_ALBUMENTATIONS_UPDATE": "1",
    # MLflow draws a progress bar for every artifact it downloads; an ensemble downloads many small tables
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def prepare_process(resolvers: Mapping[str, Callable[..., Any]] | None = None) -> None:
    """The environment defaults above (a value the user set is kept), conf/'s resolvers and an entry
    point's own `resolvers`."""
    for name, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(name, value)
    register_resolvers(resolvers)


def hydra_entry(config_name: str, task: str, resolvers: Mapping[str, Callable[..., Any]] | None = None
                ) -> Callable[[], Any]:
    """The `main` of a console script that composes conf/<config_name>.yaml with the command line's
    overrides and runs `task` ("module:function", imported only once the process is prepared) on it."""

    def main() -> Any:
        prepare_process(resolvers)
        module, name = task.split(":")
        function = reports_user_errors(getattr(importlib.import_module(module), name))
        # Hydra prints its own errors over several lines and exits 1; told to raise them, it lets
        # a mistake on the command line (or an AllclsError of a launch's callback) reach us.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        message: str | None
        try:
            return hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(function)()
        except Exception as error:  # re-raised below unless it is a user's mistake
            mistake = _allcls_cause(error)
            message = user_message(mistake) if mistake else one_line(error) if isinstance(error, HYDRA_MISTAKES) \
                else None
            if not message:
                raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)

    return main


def _allcls_cause(error: BaseException) -> AllclsError | None:
    """The AllclsError that Hydra or OmegaConf wrapped (a resolver's, a launch callback's), if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, AllclsError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
