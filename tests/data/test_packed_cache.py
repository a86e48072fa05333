"""The packed cache (`data.cache_dir`): one memory-mapped uint8 array per (dataset, split,
preprocessing), the same images as decoding gives, never stale, written atomically and once."""

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from allcls.data import packed_cache
from allcls.data.datamodule import CellDataModule
from allcls.data.images import ImageReadError, read_image
from allcls.data.packed_cache import packed_images
from allcls.data.preparation import prepare_dataset
from allcls.data.preprocessing import InputSpec, preprocess
from allcls.data.readers import CNMCReader
from allcls.data.splits import SplitSpec
from allcls.errors import AllclsError
from allcls.locks import exclusive
from allcls.predictions import read_table
from allcls.training.task import train

from helpers import PROJECT

SPEC = InputSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture
def cells(cnmc_root, tmp_path):
    """A copy of the synthetic C-NMC images that a test may change, and their paths."""
    root = shutil.copytree(cnmc_root, tmp_path / "cnmc")
    return sorted(str(p) for p in Path(root).rglob("*.bmp"))[:24]


def decoded(paths, spec=SPEC, roi_crop=False):
    return np.stack([preprocess(read_image(path), spec, roi_crop) for path in paths])


def arrays(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npy"))


@pytest.mark.parametrize("roi_crop", [False, True])
def test_the_packed_array_holds_what_decoding_gives(cells, tmp_path, roi_crop):
    packed = packed_images(tmp_path / "cache", "cells-train", cells, SPEC, roi_crop, workers=2)
    assert packed.array.shape == (len(cells), 32, 32, 3) and packed.array.dtype == np.uint8
    assert np.array_equal(packed.array, decoded(cells, roi_crop=roi_crop))
    out = np.empty((3, 32, 32, 3), np.uint8)
    expected = decoded([cells[5], cells[0], cells[5]], SPEC, roi_crop)
    assert np.array_equal(packed.gather(np.array([5, 0, 5]), out), expected)
    assert [p.name for p in arrays(tmp_path / "cache")] == [packed.path.name]
    assert packed.path.name.startswith(f"cells-train-32px{'-roi' if roi_crop else ''}-")


def test_a_changed_image_or_setting_never_hits_a_stale_array(cells, tmp_path, caplog):
    """A new array is written; the older one of the same split is named in the log, and kept."""
    cache = tmp_path / "cache"
    first = packed_images(cache, "cells-train", cells, SPEC, False)
    written = first.path.stat().st_mtime_ns
    assert packed_images(cache, "cells-train", cells, SPEC, False).path == first.path  # the same: read, not rewritten
    assert first.path.stat().st_mtime_ns == written

    cv2.imwrite(cells[3], np.full((40, 40, 3), 200, np.uint8))  # the user replaces one image
    with caplog.at_level(logging.INFO, logger=packed_cache.__name__):
        changed = packed_images(cache, "cells-train", cells, SPEC, False)
    assert changed.path != first.path and np.array_equal(changed[3], np.full((32, 32, 3), 200, np.uint8))
    assert "also holds 1 packed array(s) of cells-train-32px that no longer match" in caplog.text
    assert first.path.name in caplog.text and "delete them to free the space" in caplog.text and first.path.is_file()
    bigger = packed_images(cache, "cells-train", cells, InputSpec(48, SPEC.mean, SPEC.std), False)
    fewer = packed_images(cache, "cells-train", cells[:-1], SPEC, False)
    assert len({first.path, changed.path, bigger.path, fewer.path}) == 4
    assert bigger.array.shape[1:3] == (48, 48) and len(fewer) == len(cells) - 1


def test_a_damaged_array_is_written_again(cells, tmp_path):
    packed = packed_images(tmp_path / "cache", "cells-train", cells, SPEC, False)
    packed.path.write_bytes(packed.path.read_bytes()[:1000])  # cut short (a full disk, a copy that stopped)
    again = packed_images(tmp_path / "cache", "cells-train", cells, SPEC, False)
    assert again.path == packed.path and np.array_equal(again.array, decoded(cells))


def test_a_write_that_fails_leaves_no_array_and_names_the_image(cells, tmp_path):
    cache = tmp_path / "cache"
    Path(cells[7]).write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match=cells[7]):
        packed_images(cache, "cells-train", cells, SPEC, False, workers=2)
    assert arrays(cache) == []  # no array, and no half-written one left behind


def test_a_writer_that_died_leaves_nothing_that_is_read(cells, tmp_path):
    """A SIGKILLed writer leaves its partial file (the kernel releases its lock): the next writer
    removes it and writes the whole array."""
    cache = tmp_path / "cache"
    script = (f"import os, sys; sys.path.insert(0, {str(PROJECT)!r}); import allcls.data.packed_cache as p\n"
              "real = p.preprocess\n"
              "def slow(image, spec, roi, count=[0]):\n"
              "    count[0] += 1\n"
              "    if count[0] == 10: os.kill(os.getpid(), 9)\n"
              "    return real(image, spec, roi)\n"
              "p.preprocess = slow\n"
              f"p.packed_images({str(cache)!r}, 'cells-train', {cells!r}, p.InputSpec(32, (0.5,)*3, (0.25,)*3), "
              "False, 1)")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert killed.returncode == -9
    (partial,) = cache.glob("*.partial.npy")
    packed = packed_images(cache, "cells-train", cells, SPEC, False)
    assert np.array_equal(packed.array, decoded(cells)) and not partial.exists()
    assert arrays(cache) == [packed.path]


def test_processes_started_at_once_write_one_array_and_all_read_it(cells, tmp_path):
    """DDP ranks or parallel jobs on one cache: one writes under the lock, the others wait and read
    the same file (a second write would replace it: another inode). The test holds the lock until
    all four wait at it, so they truly arrive at once."""
    cache = tmp_path / "cache"
    lock = cache / f"cells-train-32px-{packed_cache.cache_key(cells, SPEC, False)[:20]}.lock"
    script = (f"import sys; sys.path.insert(0, {str(PROJECT)!r}); import os; import allcls.data.packed_cache as p\n"
              "print('ready', flush=True)\n"
              f"a = p.packed_images({str(cache)!r}, 'cells-train', {cells!r}, p.InputSpec(32, (0.5,)*3, (0.25,)*3), "
              "False)\nprint(a.path, os.stat(a.path).st_ino, int(a.array.sum()))")
    with exclusive(lock):
        processes = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
                     for _ in range(4)]
        assert all(process.stdout.readline().strip() == "ready" for process in processes)
        time.sleep(1)  # each is now at the lock
    answers = {process.communicate(timeout=120)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert len(answers) == 1 and f" {int(decoded(cells).sum())}" in answers.pop()
    assert len(arrays(cache)) == 1 and not list(cache.glob("*.partial.npy"))


def test_a_cache_that_does_not_fit_on_the_disk_is_refused_before_writing(cells, tmp_path, monkeypatch):
    monkeypatch.setattr(packed_cache, "SPARE_BYTES", 2**60)  # more than any disk has free
    with pytest.raises(AllclsError, match=r"data.cache_dir=.* GiB free, but the packed images of cells-train-32px "
                                          r"need .*data.cache_dir=null"):
        packed_images(tmp_path / "cache", "cells-train", cells, SPEC, False)
    assert arrays(tmp_path / "cache") == []


def test_loaders_serve_the_packed_images_in_batches_from_workers_too(cnmc_root, tmp_path):
    dataset = prepare_dataset(CNMCReader(cnmc_root), SplitSpec())
    plain = CellDataModule(dataset, SPEC, num_workers=0, batch_size=8)
    packed = CellDataModule(dataset, SPEC, num_workers=2, batch_size=8, cache_dir=str(tmp_path / "cache"))
    assert CellDataModule(dataset, SPEC, cache_dir=str(tmp_path / "cache")).num_workers == 0  # the default
    packed.prepare_data()
    assert len(arrays(tmp_path / "cache")) == 3  # one per split
    for module in (plain, packed):
        module.setup()
    for split in ("val", "test"):
        expected = torch.cat([images for images, _ in plain.eval_dataloader(split)])
        served = list(packed.eval_dataloader(split))  # gathered in worker processes, through shared memory
        assert torch.equal(torch.cat([images for images, _ in served]), expected)
        assert torch.equal(torch.cat([labels for _, labels in served]),
                           torch.tensor(packed.split_dataset(split).labels))


def test_a_run_on_the_packed_cache_trains_the_same_model(train_cfg, mlflow_client, tmp_path):
    """The cache changes where the pixels come from, not what they are: same seed, same tables."""
    train(train_cfg("trainer.max_epochs=2"))
    train(train_cfg("trainer.max_epochs=2", f"data.cache_dir={tmp_path / 'cache'}"))
    experiment = mlflow_client.get_experiment_by_name("synthetic-cnmc")
    runs = mlflow_client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.params["packed_cache"] for r in runs] == ["False", "True"]
    tables = [read_table(mlflow_client.download_artifacts(r.info.run_id, "predictions/test.parquet",
                                                          str(tmp_path / r.info.run_id))) for r in runs]
    assert tables[0].equals(tables[1])
    assert len(arrays(tmp_path / "cache")) == 3
