"""The worst case over an ensemble's members is chosen again on the whole stitched volume."""

from __future__ import annotations

import json

import pytest
import torch

import generate_adv_samples as gen
from engine.evaluation import worst_volume
from networks import WindowSettings
from tests.scripts.helpers import eval_flags

pytestmark = pytest.mark.usefixtures("one_thread")


class Threshold(torch.nn.Module):
    """Two-class 'model': class 1 where the image is above 0.5."""

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5], dim=1) * 10


def test_the_lowest_dice_wins_and_targeted_the_highest():
    label = torch.zeros(1, 1, 16, 16, 8)
    label[..., 4:12, 4:12, 2:6] = 1
    volumes = {"right": label.clone(), "half": label * (torch.arange(16).view(1, 1, 16, 1, 1) < 8),
               "wrong": 1 - label}
    window = WindowSettings(roi=(16, 16, 8), sw_batch_size=1, overlap=0.0)
    volume, name = worst_volume(Threshold(), window, volumes, label, targeted=False, num_classes=2)
    assert name == "wrong" and torch.equal(volume, volumes["wrong"])
    # targeted: the labels are the target, the volume closest to it wins
    _, name = worst_volume(Threshold(), window, volumes, label, targeted=True, num_classes=2)
    assert name == "right"


def test_the_ensemble_reports_its_volume_winner(tiny_dataset, checkpoint, tmp_path):
    argv = eval_flags(tiny_dataset, checkpoint, tmp_path, "--attack_name", "worst-case", "--attacks", "pgd",
                      "apgd-dice-ce", "--steps", "1", "--eps", "8")
    assert gen.main(argv) == 0
    (results,) = [json.loads(p.read_text()) for p in tmp_path.glob("*/results.json")]
    (case,) = results["per_case"].values()
    assert case["volume_winner"] in {"per-tile", "pgd", "apgd-dice-ce"}
