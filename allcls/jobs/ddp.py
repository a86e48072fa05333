"""Distributed data parallel (DDP) under Hydra: which process is rank zero, and how the DDP
children of a multirun job re-create exactly that job."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import read_write

# What Lightning's subprocess launcher sets in the main process's environment.
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def is_rank_zero() -> bool:
    """True in the main process. Valid before the Trainer exists: Lightning sets the rank of a DDP
    child process from the environment (LOCAL_RANK, RANK, SLURM_PROCID) at import."""
    # Lightning's types leave out the `rank` it sets on the function (its documented way to read it)
    return rank_zero_only.rank == 0  # type: ignore[attr-defined]


def rerun_this_job_in_ddp_children() -> None:
    """Make Lightning's DDP launcher start children that re-run THIS job, not the whole sweep.

    Lightning starts each DDP child by re-running sys.argv with `hydra.run.dir=<run dir>`. In a
    multirun, sys.argv still holds `-m` and the sweep's comma lists, so each child would launch the
    whole sweep again (lightning-hydra-template documents this as an open problem). Here sys.argv
    becomes this job's own overrides and the run dir becomes this job's output folder, so each child
    composes the same config as its parent and writes beside it.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    # Hydra types HydraConfig.get() as its HydraConf dataclass; it returns the DictConfig made from it
    with read_write(hydra_cfg):  # type: ignore[arg-type]
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


@contextmanager
def distributed_job() -> Iterator[None]:
    """Leave the process as it was before this job's DDP: the next job of a multirun runs in this
    same process and must start its own process group and its own children.

    Lightning's launcher writes LOCAL_RANK and friends into the main process's environment, and a
    set LOCAL_RANK tells the next Trainer that processes are created externally: it would wait for
    children that never come. The old group's peers have exited, so the group must go too.
    """
    saved = {name: os.environ.get(name) for name in LAUNCHER_VARIABLES}
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
