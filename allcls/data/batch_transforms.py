"""The batch pipeline's device side: augmentations applied to a whole batch of tensors at once, and
the conversion of uint8 images into the network's normalised float input.

Loaders carry uint8 images (a quarter of the bytes of float32 through worker queues, pinned memory
and the bus); flips, transposes and right-angle rotations, the augmentations cells are usually
trained with, then cost one indexed copy per batch instead of a Python call per image. Presets
with other transforms keep the per-sample albumentations pipeline (allcls.data.datamodule picks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import torch

# albumentations transforms with a batch form, by class: their only setting is p.
BATCH_FORMS = {A.HorizontalFlip: "hflip", A.VerticalFlip: "vflip", A.Transpose: "transpose",
               A.RandomRotate90: "rot90", A.D4: "d4"}


def lacks_batch_form(transforms: Sequence[A.BasicTransform]) -> list[str]:
    """The names of the transforms that the batch pipeline cannot apply (empty: it can apply all)."""
    return [type(t).__name__ for t in transforms if type(t) not in BATCH_FORMS]


def _dihedral(transposed: bool, turns: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """One of the eight symmetries of a square, as a transpose (or not) then `turns` quarter turns."""
    def view(images: torch.Tensor) -> torch.Tensor:
        if transposed:
            images = images.transpose(-2, -1)
        return torch.rot90(images, turns, (-2, -1)) if turns else images
    return view


# The eight symmetries of a square (0: the identity), and what each preset transform makes of each:
# found by applying both to a probe image, so the table cannot disagree with the views themselves.
SYMMETRIES = [_dihedral(t, k) for t in (False, True) for k in range(4)]
STEP_VIEWS = {"hflip": lambda x: x.flip(-1), "vflip": lambda x: x.flip(-2), "transpose": lambda x: x.transpose(-2, -1),
              **{f"rot{k}": _dihedral(False, k) for k in range(1, 4)}}
_PROBE = torch.arange(9).view(3, 3)
_SEEN = [s(_PROBE) for s in SYMMETRIES]
THEN = {name: torch.tensor([next(i for i, seen in enumerate(_SEEN) if torch.equal(seen, view(s(_PROBE))))
                            for s in SYMMETRIES]) for name, view in STEP_VIEWS.items()}


class BatchAugmentation:
    """An albumentations preset of flips, transposes and right-angle rotations, applied to a batch
    (N, C, H, W) of square images, any dtype, on any device, in place.

    Each transform runs in the preset's order with its own probability, drawn independently for
    every image, and RandomRotate90 and D4 draw their rotation (and D4 its transpose) per image as
    albumentations does, so each image gets the same distribution of views as the per-sample
    pipeline gives it. The draws (a few numbers per image, on the CPU, from the generator seeded
    here: the run's seed and the process's rank) compose into one of the square's eight symmetries
    per image; the batch is then rearranged once, one group of images per symmetry.
    """

    def __init__(self, transforms: Sequence[A.BasicTransform], seed: int = 0):
        unsupported = lacks_batch_form(transforms)
        if unsupported:
            raise ValueError(f"no batch form for {unsupported}")
        self.steps = [(BATCH_FORMS[type(t)], float(t.p)) for t in transforms]
        self.generator = torch.Generator().manual_seed(seed)

    def symmetries(self, count: int) -> torch.Tensor:
        """Draw each image's views through the preset: its symmetry's index in SYMMETRIES."""
        chosen = torch.zeros(count, dtype=torch.int64)
        for kind, p in self.steps:
            applied = torch.rand(count, generator=self.generator) < p
            if kind in ("rot90", "d4"):
                if kind == "d4":  # its eight elements: a transpose or not, then 0 to 3 quarter turns
                    transposed = applied & (torch.rand(count, generator=self.generator) < 0.5)
                    chosen = torch.where(transposed, THEN["transpose"][chosen], chosen)
                turns = torch.randint(0, 4, (count,), generator=self.generator)
                for k in (1, 2, 3):
                    chosen = torch.where(applied & (turns == k), THEN[f"rot{k}"][chosen], chosen)
            else:
                chosen = torch.where(applied, THEN[kind][chosen], chosen)
        return chosen

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        chosen = self.symmetries(len(images))
        for index, view in enumerate(SYMMETRIES[1:], start=1):
            members = (chosen == index).nonzero().squeeze(1)
            if len(members):
                members = members.to(images.device)
                images[members] = view(images[members])
        return images
