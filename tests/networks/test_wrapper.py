"""``SegmentationModel``: deep-supervision lists, dicts and an own intensity scale, through an attack."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from attacks import PGD
from training.losses import build_dice_ce
from networks.wrapper import SegmentationModel


class Recorder(nn.Module):
    """Returns [x-derived logits, half-resolution logits] or a dict of them; records its input."""

    def __init__(self, as_dict: bool = False):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 1)
        self.as_dict = as_dict
        self.seen = None

    def forward(self, z):
        self.seen = z.detach().clone()
        full, half = self.conv(z), self.conv(nn.functional.avg_pool3d(z, 2))
        return {"aux": half, "out": full} if self.as_dict else [full, half]


@pytest.mark.parametrize("as_dict", [False, True])
def test_the_full_resolution_output_of_the_scaled_input(as_dict):
    net = Recorder(as_dict)
    model = SegmentationModel(net, in_scale=425 / 75, in_shift=-215 / 75)
    x = torch.rand(2, 1, 8, 8, 4)
    out = model(x)
    torch.testing.assert_close(net.seen, x * 425 / 75 - 215 / 75)
    torch.testing.assert_close(out, net.conv(net.seen))
    assert out.shape == (2, 3, 8, 8, 4)


def test_output_naming_something_else_than_a_tensor_is_refused():
    model = SegmentationModel(nn.Identity(), output=0)
    with pytest.raises(TypeError, match="not a tensor of logits"):
        SegmentationModel(_Nested(), output=0)(torch.rand(1, 1, 2, 2, 2))
    assert model(torch.ones(1)).shape == (1,)


class _Nested(nn.Module):
    def forward(self, x):
        return [[x]]


def test_pgd_attacks_the_wrapped_model_within_budget():
    torch.manual_seed(0)
    model = SegmentationModel(Recorder(), in_scale=2.0, in_shift=-1.0).eval()
    x = torch.rand(1, 1, 8, 8, 4)
    labels = torch.randint(0, 3, (1, 1, 8, 8, 4)).float()
    adv = PGD(model, build_dice_ce(), eps=4 / 255, alpha=1 / 255, steps=3)(x, labels)
    assert 0 < float((adv - x).abs().max()) <= 4 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
