"""The Optuna study of `hparams_search=optuna`, kept in SQLite (optuna.db beside mlruns/) so that
running the same command again continues the search instead of starting it over.

Hydra's Optuna sweeper runs `hydra.sweeper.n_trials` new trials on every launch. conf/hparams_search
asks it instead for the trials still missing from the search's total (`optuna_trials`), counted
here when the sweeper is set up; the sampler's seed moves on likewise (`sampler_seed`). Trials of a
launch that was stopped stay in the study as RUNNING (or FAIL) and do not count.
"""

from __future__ import annotations

import logging
from pathlib import Path

from allcls.errors import AllclsError
from allcls.tracking.store import sqlite_problem

log = logging.getLogger(__name__)


def _stored_trials(storage: str | None, study_name: str, states=None) -> list:
    if not storage:
        return []
    if (problem := sqlite_problem(storage)) is not None:
        raise AllclsError(f"{problem}, and the Optuna study is meant to be kept there (hydra.sweeper.storage="
                          f"{storage}): move that file away, or set hydra.sweeper.storage to another file. Nothing "
                          "was changed.")
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        return []  # a new search: its file is created by the sweeper, once the search is known to be valid
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet: a new search
        return []
    return study.get_trials(deepcopy=False, states=states)


def trials_left(total: int, storage: str | None, study_name: str) -> int:
    """How many trials the search still needs to reach `total` finished ones."""
    from optuna.trial import TrialState

    if not isinstance(total, int) or total < 1:  # before the study exists: a search of no trials searches nothing
        raise AllclsError(f"optuna_trials={total!r} is out of range: it takes a whole number of at least 1.")
    done = len(_stored_trials(storage, study_name, (TrialState.COMPLETE,)))
    left = max(int(total) - done, 0)
    if done:
        log.info("Optuna study %r in %s has %d finished trial(s): %d to go of %d.", study_name, storage, done,
                 left, total)
    return left


def sampler_seed(seed: int, storage: str | None, study_name: str) -> int:
    """The sampler's seed for this launch: `seed` for a new search, then moved on by the trials the
    study already holds, so that a continued search does not draw its first trials' values again
    (and the same sequence of launches still draws the same values)."""
    return int(seed) + len(_stored_trials(storage, study_name))


# The resolvers conf/hparams_search/optuna.yaml asks for (registered by the training entry point):
RESOLVERS = {
    # `${optuna_trials_left:20,sqlite:///optuna.db,name}`: the trials a stored search still needs
    "optuna_trials_left": trials_left,
    # `${optuna_sampler_seed:1234,sqlite:///optuna.db,name}`: a seed that moves on as the search goes
    "optuna_sampler_seed": sampler_seed,
}
