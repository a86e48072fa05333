"""The sides of benchmarks/serving.py's batch comparison, each run in a fresh process of its own:
`allcls-predict` as a user types it, and the plain loop a user would write without allcls. Each
returns (seconds to the model loaded, seconds predicting), imports done."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def allcls_predict(model: str, folder: Path, output: Path, runtime: str) -> tuple[float, float]:
    """(seconds to the model loaded, seconds predicting) of `allcls-predict runtime=<runtime>`, imports done."""
    from allcls.serving import cli, predict
    from allcls.tracking import registry

    loaded_at = []
    load = registry.load

    def load_and_note(*args, **kwargs):
        loaded = load(*args, **kwargs)
        loaded_at.append(time.perf_counter())
        return loaded

    predict.registry.load = load_and_note  # type: ignore[attr-defined]
    sys.argv = ["allcls-predict", f"model={model}", f"input={folder}", f"output={output}", f"runtime={runtime}"]
    start = time.perf_counter()
    try:
        cli.predict()
    except SystemExit as end:
        if end.code:
            raise
    finally:
        predict.registry.load = load  # type: ignore[attr-defined]
    return loaded_at[0] - start, time.perf_counter() - loaded_at[0]


def plain_loop(checkpoint: str, folder: Path, output: Path) -> tuple[float, float]:
    """(seconds loading, seconds predicting) of the plain loop: the checkpoint into a timm model,
    then each image with PIL."""
    import csv

    import timm
    import torch
    from PIL import Image
    from torchvision import transforms

    start = time.perf_counter()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    classes = list(saved["hyper_parameters"]["class_names"])
    backbone = saved["hyper_parameters"]["backbone"]  # what a plain script knows of its own model
    size = backbone["input_size"] or 224
    model = timm.create_model(backbone["name"], num_classes=len(classes))
    model.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()
                           if k.startswith("model.")})
    model.eval()
    config = timm.data.resolve_data_config({}, model=model)
    preprocess = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                     transforms.Normalize(config["mean"], config["std"])])
    loaded = time.perf_counter()
    with open(output, "w", newline="") as handle, torch.no_grad():
        writer = csv.writer(handle)
        writer.writerow(["path", "label", *[f"prob_{c}" for c in classes]])
        for path in sorted(folder.glob("*.bmp")):
            image = preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
            probabilities = model(image).softmax(dim=1)[0].tolist()
            writer.writerow([str(path), classes[max(range(len(classes)), key=probabilities.__getitem__)],
                             *probabilities])
    return loaded - start, time.perf_counter() - loaded
