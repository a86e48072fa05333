"""Resuming a training job into the same MLflow run.

When a job's run starts, its folder gets, beside checkpoints/, the run's id and store
(`mlflow_run.json`) and the job's resolved config (`config.resolved.yaml`); every
epoch leaves `checkpoints/last.ckpt`, and so does a job stopped by SIGTERM or Ctrl-C
(allcls.training.fit.CheckpointOnStop).
`python train.py resume=<job folder | run id | last>` then continues from `last.ckpt` with the
job's own config, into its own run and folder. A command that asks for a different setting than
the job ran with is refused, naming the setting: MLflow keeps a run's params fixed.
A job that SLURM or submitit requeues (it starts again in its own folder, which holds its run)
resumes by itself.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from allcls.config.hydra_job import JobInfo
from allcls.errors import AllclsError
from allcls.models.checkpoints import read_checkpoint
from allcls.tracking.tracker import Tracker

RUN_FILE = Path("mlflow_run.json")
CONFIG_FILE = Path("config.resolved.yaml")
LAST = Path("checkpoints/last.ckpt")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ResumePoint:
    """An unfinished job: its folder, its MLflow run, its resolved config and how Hydra launched it."""

    folder: Path
    run_id: str
    config_yaml: str
    job: JobInfo

    @property
    def checkpoint(self) -> Path | None:
        last = self.folder / LAST
        return last if last.is_file() else None


def remember_the_run(folder: Path, run_id: str, config_yaml: str, tracking_uri: str, experiment_name: str,
                     job: JobInfo) -> None:
    """Written when the run starts: what `resume` needs to find and continue this job."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(config_yaml)
    record = {"run_id": run_id, "tracking_uri": tracking_uri, "experiment_name": experiment_name, "job": asdict(job)}
    (folder / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_point(folder: Path) -> ResumePoint:
    """The unfinished job in `folder`."""
    if not (folder / RUN_FILE).is_file():
        raise AllclsError(f"{folder} holds no training job that can be resumed (no {RUN_FILE}): give resume= the "
                          "folder of a training job (the one holding checkpoints/), its MLflow run id, or `last`.")
    record = read_record(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise AllclsError(f"{folder / CONFIG_FILE} is missing: the job's folder is incomplete, and resume needs the "
                          "config the job ran with. Start the job again instead.")
    return ResumePoint(folder.resolve(), record["run_id"], (folder / CONFIG_FILE).read_text(), JobInfo(**record["job"]))


def read_record(folder: Path) -> dict[str, Any]:
    """The job's record (RUN_FILE), checked whole: a cut or edited one is named, not a JSON traceback."""
    path = folder / RUN_FILE
    try:
        record = json.loads(path.read_text())
        fields = set(JobInfo.__dataclass_fields__)
        complete = (isinstance(record, dict) and {"run_id", "tracking_uri", "experiment_name", "job"} <= set(record)
                    and isinstance(record["job"], dict) and "sweep_id" in record["job"]
                    and set(record["job"]) <= fields)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = str(error)
    else:
        if complete:
            return record
        reason = "it lacks fields a job writes"
    raise AllclsError(f"{path} is damaged ({reason}): allcls writes it when a job starts and never edits it. Restore "
                      "it from a backup, or start the job again.")


def find_point(resume: str, tracker: Tracker, experiment_name: str) -> ResumePoint:
    """The job that `resume=` names: a job folder, an MLflow run id, or `last` (the newest training
    run of the experiment that did not finish and has a checkpoint)."""
    if Path(resume).is_dir():
        return read_point(Path(resume))
    if RUN_ID.match(resume):
        run = tracker.get_run(resume)
        return read_point(job_folder(run))
    if resume != "last":
        raise AllclsError(f"resume={resume!r} is neither a folder nor an MLflow run id: give the folder of a "
                          "training job, its run id, or `last`.")
    for run in tracker.unfinished_training_runs(tracker.experiment(experiment_name)):
        folder = Path(run.data.tags.get("output_dir", ""))
        if run.data.tags.get("output_dir") and (folder / LAST).is_file():
            return read_point(folder)
    raise AllclsError(f"resume=last: experiment {experiment_name!r} has no unfinished training run with a "
                      "checkpoint on this machine. Name the job's folder or run id instead.")


def resuming(resume: str | None, output_dir: Path) -> bool:
    """Whether this job continues another: `resume=` names one, or SLURM requeued this very job."""
    return bool(resume) or requeued_point(output_dir) is not None


def resume_point(resume: str | None, output_dir: Path, experiment_name: str, tracker: Tracker,
                 command_config: str, overrides: list[str], main_process: bool = True) -> ResumePoint:
    """The unfinished job this one continues (see `resuming`), checked to be one that can go on with
    what this command (`command_config`, resolved YAML; `overrides`) asks. A DDP child process
    (`main_process` false) finds its parent's run RUNNING, as it should be: it checks nothing."""
    requeued = None if resume else requeued_point(output_dir)
    point = requeued or find_point(str(resume), tracker, experiment_name)
    if main_process:
        check_resumable(point, tracker.get_run(point.run_id))
        refuse_changes(yaml.safe_load(point.config_yaml), yaml.safe_load(command_config), overrides)
    return point


def job_folder(run) -> Path:
    folder = run.data.tags.get("output_dir")
    if not folder:
        raise AllclsError(f"Run {run.info.run_id} does not say where its job's folder is (it predates resume): "
                          "give resume= that folder instead.")
    return Path(folder)


def requeued_point(output_dir: Path) -> ResumePoint | None:
    """A job that SLURM (or submitit) requeued starts again in its own folder: continue it there.
    Elsewhere a folder that holds a run is refused, never resumed unasked."""
    requeued = os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0") or "SUBMITIT_EXECUTOR" in os.environ
    if requeued and (output_dir / RUN_FILE).is_file():
        return read_point(output_dir)
    return None


def check_resumable(point: ResumePoint, run) -> None:
    """Refuse a run that finished, or whose process still runs."""
    status, tags = run.info.status, run.data.tags
    if status == "FINISHED":
        raise AllclsError(f"Run {point.run_id} ({point.folder}) has finished: there is nothing to resume.")
    if status == "RUNNING" and tags.get("host") == socket.gethostname() and tags.get("pid", "").isdigit() \
            and int(tags["pid"]) != os.getpid() and alive(int(tags["pid"])):
        raise AllclsError(f"Run {point.run_id} is still being trained by process {tags['pid']}: stop it first "
                          "(kill -TERM saves a checkpoint), then resume.")
    if point.checkpoint is None:
        raise AllclsError(f"{point.folder} has no {LAST}: the job stopped before its first epoch ended. Start it "
                          "again as a new job.")
    # Read safely here, before the run is reopened: Lightning would read it with a traceback (and for a
    # file holding Python objects, advice to load it unsafely), after the run was marked as running.
    read_checkpoint(point.checkpoint)


def alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (also under another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def refuse_changes(ran_with: Mapping[str, Any], command: Mapping[str, Any], overrides: list[str]) -> None:
    """The settings this command sets (its overrides) must be the ones the job ran with (both
    configs as resolved values)."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.startswith(("hydra.", "hydra/")) or key.split(".")[0] == "paths":
            continue
        key = key.replace("/", ".")
        asked, ran = _value(command, key), _value(ran_with, key)
        if asked != ran:
            raise AllclsError(f"resume: this command sets {key}={_short(asked)}, but the job ran with "
                              f"{key}={_short(ran)}. MLflow keeps a run's settings fixed: drop {override!r} to "
                              "resume, or start a new job for the new setting.")


def refuse_changed_params(run_id: str, logged: Mapping[str, str], params: Mapping[str, Any]) -> dict[str, Any]:
    """The params to log on resume: none that the run has with the same value; a changed one is refused."""
    for key, value in params.items():
        if key in logged and logged[key] != str(value):
            raise AllclsError(f"resume: param {key} of run {run_id} was {logged[key]!r} and would now be "
                              f"{str(value)!r} (the data or the code changed since the job started). MLflow keeps "
                              "a run's params fixed: start a new job.")
    return {key: value for key, value in params.items() if key not in logged}


def _value(config: Any, key: str) -> Any:
    """The value at a dotted key of nested values (`augmentation.transforms.0.p`), None where absent."""
    for part in key.split("."):
        if isinstance(config, Mapping):
            config = config.get(part)
        elif isinstance(config, list) and part.isdigit() and int(part) < len(config):
            config = config[int(part)]
        else:
            return None
    return config


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."
