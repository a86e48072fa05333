"""A plain PyTorch fine-tuning script, as a user would write it without allcls: the baseline that
allcls must match on real data (benchmarks/aria_transfer.py runs both).

torchvision's MobileNetV2 with ImageNet weights from a local file, new 4-class head, flips and
right-angle rotations, AdamW with cosine decay, the epoch with the best validation weighted F1 kept,
then balanced accuracy and weighted F1 on the held-out test images. The train/val/test images come
from a split manifest (sample_id,split,...), so both contenders see exactly the same images.

    python benchmarks/plain_finetune.py --root DATA/aria --manifest split_manifest.csv --weights mobilenet_v2.pth
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import random
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models import mobilenet_v2

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageList(Dataset):
    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label = self.items[index]
        return self.transform(Image.open(path).convert("RGB")), label


class RightAngle:
    def __call__(self, image):
        return image.rotate(90 * random.randrange(4))


def evaluate(model, loader):
    model.eval()
    predicted, labels = [], []
    with torch.no_grad():
        for images, targets in loader:
            predicted += model(images).argmax(1).tolist()
            labels += targets.tolist()
    return balanced_accuracy_score(labels, predicted), f1_score(labels, predicted, average="weighted")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--weights", required=True, help="torchvision mobilenet_v2 ImageNet state dict")
    parser.add_argument("--classes", default="Benign,Early,Pre,Pro")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    classes = args.classes.split(",")
    splits = {"train": [], "val": [], "test": []}
    with open(args.manifest, newline="") as handle:
        for row in csv.DictReader(handle):
            splits[row["split"]].append((str(Path(args.root) / row["sample_id"]), classes.index(row["label"])))

    resize = T.Resize((args.size, args.size))
    train_tf = T.Compose([resize, T.RandomHorizontalFlip(), T.RandomVerticalFlip(), RightAngle(),
                          T.ToTensor(), T.Normalize(MEAN, STD)])
    eval_tf = T.Compose([resize, T.ToTensor(), T.Normalize(MEAN, STD)])
    loaders = {
        name: DataLoader(ImageList(items, train_tf if name == "train" else eval_tf), batch_size=args.batch_size,
                         shuffle=name == "train", num_workers=args.workers, persistent_workers=args.workers > 0)
        for name, items in splits.items()
    }

    model = mobilenet_v2()
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.classifier[1] = nn.Linear(model.last_channel, len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loss_fn = nn.CrossEntropyLoss()

    best_f1, best_state = -1.0, None
    for epoch in range(args.epochs):
        model.train()
        for images, targets in loaders["train"]:
            optimizer.zero_grad()
            loss_fn(model(images), targets).backward()
            optimizer.step()
        scheduler.step()
        _, val_f1 = evaluate(model, loaders["val"])
        if val_f1 > best_f1:
            best_f1, best_state = val_f1, copy.deepcopy(model.state_dict())
        print(f"epoch {epoch}: val weighted F1 {val_f1:.3f}", flush=True)
    model.load_state_dict(best_state)
    balanced, weighted_f1 = evaluate(model, loaders["test"])
    print(json.dumps({"test/balanced_accuracy": balanced, "test/f1_weighted": weighted_f1, "val/f1_weighted": best_f1}))


if __name__ == "__main__":
    main()
