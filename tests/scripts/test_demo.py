"""The demo's tables and its choice of training precision."""

from __future__ import annotations

import pytest

from tests.scripts.helpers import load_script


@pytest.fixture(scope="module")
def demo():
    return load_script("demo", "demo_script")

def overall(clean, adv):
    return {"dice_clean": 60.0, "dice_adv": 40.0, "hd95_clean": 10.0, "hd95_adv": 20.0, "success_rate": 5.0,
            "ssim": 0.99, "psnr": 40.0, "lpips_similarity": None,
            "per_organ": {"background": {"dice_clean": 99.0, "dice_adv": 98.0},
                          "liver": {"dice_clean": clean, "dice_adv": adv},
                          "pancreas": {"dice_clean": None, "dice_adv": None}}}

def test_organ_table_has_clean_then_each_attack(demo):
    reports = {"PGD": (overall(90.0, 80.0), "a"), "VAFA": (overall(90.0, 55.5), "b")}
    lines = demo.organ_table(reports).splitlines()
    assert lines[0] == "| class | clean | PGD | VAFA |"
    assert "| liver | 90.0 | 80.0 | 55.5 |" in lines
    assert "| pancreas | – | – | – |" in lines  # in no validation case

def test_explicit_precision_is_kept(demo):
    assert demo.demo_precision("fp32", "cpu") == "fp32"
    assert demo.demo_precision("bf16", "cpu") == "bf16"
    assert demo.cpu_precision("flags\t: fpu avx2 avx512f avx512_bf16 amx_tile\n") == "bf16"
    assert demo.cpu_precision("flags\t: fpu amx_bf16\n") == "bf16"
    assert demo.cpu_precision("flags\t: fpu avx2 avx512f avx512_vnni\n") == "fp32"  # emulated bf16 is slower
