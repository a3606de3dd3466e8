"""Attack your own segmentation network from Python (README: "Your own model, from Python").

A network that returns deep-supervision outputs (a list, full resolution first) and expects z-scored CT
intensities is wrapped in :class:`networks.wrapper.SegmentationModel`, then attacked with PGD and VAFA-3D on
a phantom CT volume; prints the Dice of the clean and attacked predictions. Runs on a CPU in about a minute.

    python scripts/own_model_example.py
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks import PGD, VAFA3D  # noqa: E402
from data.phantom import make_phantom_case  # noqa: E402
from training.losses import build_dice_ce  # noqa: E402
from networks.wrapper import SegmentationModel  # noqa: E402
from utils.metrics import class_mean, dice_per_class  # noqa: E402


class MyNet(nn.Module):
    """Stands for your network: z-scored HU in, [full, half-resolution] logits out (deep supervision)."""

    def __init__(self, classes: int = 14):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1), nn.ReLU())
        self.head, self.head_half = nn.Conv3d(8, classes, 1), nn.Conv3d(8, classes, 1)

    def forward(self, z):
        features = self.body(z)
        return [self.head(features), self.head_half(nn.functional.avg_pool3d(features, 2))]


def main() -> int:
    torch.manual_seed(0)
    image_hu, label = make_phantom_case((32, 32, 16), (1.5, 1.5, 2.0), rng=0)
    lo, hi, mean, std = -175.0, 250.0, 40.0, 75.0  # your training window and z-score statistics
    image = ((torch.from_numpy(image_hu).float().clamp(lo, hi) - lo) / (hi - lo))[None, None]  # [1, 1, H, W, D] in [0, 1]
    labels = torch.from_numpy(label).float()[None, None]  # [1, 1, H, W, D]

    # [0, 1] -> clipped HU -> z-score: x * (hi - lo) / std + (lo - mean) / std; the first output is the logits
    model = SegmentationModel(MyNet(), output=0, in_scale=(hi - lo) / std, in_shift=(lo - mean) / std).eval()
    # your trained weights: model.module.load_state_dict(torch.load("my_net.pt", weights_only=True))
    loss = build_dice_ce()
    attacks = {"PGD eps 4/255, 10 steps": PGD(model, loss, eps=4 / 255, alpha=1 / 255, steps=10),
               "VAFA-3D q_max 20, 10 steps": VAFA3D(model, loss, q_max=20, steps=10, block_size=(8, 8, 8))}
    with torch.no_grad():
        clean = class_mean(dice_per_class(model(image).argmax(1, keepdim=True), labels, 14))
    print(f"clean Dice {clean:.4f}")
    for name, attack in attacks.items():
        adv = attack(image, labels)
        with torch.no_grad():
            dice = class_mean(dice_per_class(model(adv).argmax(1, keepdim=True), labels, 14))
        print(f"{name}: Dice {dice:.4f}, max |adv - image| {float((adv - image).abs().max()):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
