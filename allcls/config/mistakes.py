"""Hydra's own errors for a mistake on the command line (an unknown config name, a key that is not
in the config, an override it cannot parse), as one line naming the closest valid name: the typed
sections (allcls.config.sections) already say "did you mean" for their keys; this covers the rest.
A key that was renamed is named with its new name."""

from __future__ import annotations

import difflib

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

# Keys that moved, old -> new: a command written for an older allcls gets the new name.
RENAMED = {
    "data.skip_unreadable_images": "dataset.skip_unreadable_images",
}

HYDRA_MISTAKES = (MissingConfigException, ConfigCompositionException, OverrideParseException)


def one_line(error: Exception) -> str | None:
    """The user's mistake behind a Hydra error, in one line; None for an error that is not one."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        options = list(error.options or [])
        if not group or not options:
            return _first_line(error)
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return f"{group}={name}: there is no such {group} config{hint}. Choose one of: {', '.join(options)}."
    if isinstance(error, OverrideParseException):
        return f"cannot read the override: {_first_line(error)} (see `--help` for the override syntax)."
    cause = error.__cause__
    if isinstance(error, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException) and cause.full_key:
        key = str(cause.full_key)
        if key in RENAMED:
            return f"{key} was renamed {RENAMED[key]}: write {RENAMED[key]}=... instead."
        parent = cause.parent_node
        siblings = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
        prefix, _, leaf = key.rpartition(".")
        close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.5)
        hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
        where = f"in {prefix}" if prefix else "at the top of the config"
        return f"{key}: there is no such key {where}{hint}. Add it with +{key}=... only if it is meant to be new."
    if isinstance(error, HYDRA_MISTAKES):
        return _first_line(error)
    return None


def _first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
