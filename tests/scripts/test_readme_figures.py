"""scripts/readme_figures.py: the README's demo blocks rewritten from a demo's results."""

from __future__ import annotations

import json
import os

import pytest

from scripts import demo, readme_figures

README = """# title
text
<!-- readme-figures:demo-table -->
| old table |
<!-- /readme-figures:demo-table -->
<!-- readme-figures:demo-figure -->
<!-- /readme-figures:demo-figure -->
middle
<!-- readme-figures:demo-organs -->
| old organs |
<!-- /readme-figures:demo-organs -->
end
"""


def _overall(dice_adv: float) -> dict:
    organs = {"background": {"dice_clean": 99.0, "dice_adv": 98.0}, "spleen": {"dice_clean": 90.0, "dice_adv": dice_adv}}
    return {"dice_clean": 74.2, "dice_adv": dice_adv, "hd95_clean": 8.8, "hd95_adv": 15.0, "success_rate": 1.0,
            "ssim": 0.93, "psnr": 28.0, "lpips_similarity": None, "per_organ": organs}


def _fake_demo(out):
    """The demo's three run folders (results.json, one figure) without running anything."""
    data = ["--data_dir", str(out / "data"), "--pretrained_path", str(out / "model" / "model_best.pt"), "--debugging"]
    for i, attack in enumerate(demo.ATTACKS.values()):
        run_dir = out / "adversarial" / demo.attack_folder(demo.MODEL + data + attack)
        (run_dir / "figures").mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps({"overall": _overall(60.0 + i)}))
        (run_dir / "figures" / "img0001.png").write_bytes(b"png" + bytes([i]))


def test_the_owned_blocks_are_rewritten_and_the_rest_kept(tmp_path):
    _fake_demo(tmp_path / "demo")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    reports = readme_figures.demo_reports(str(tmp_path / "demo"))
    readme_figures.rebuild(str(readme), reports, str(tmp_path / "docs"), epochs=3)
    text = readme.read_text()
    assert "old table" not in text and "old organs" not in text
    assert "| PGD eps=4 | 60.0 |" in text and "| spleen | 90.0 | 60.0 | 61.0 | 62.0 |" in text
    assert "make readme-figures` at commit" in text and "(3 training epochs)" in text
    assert text.startswith("# title\ntext\n") and "\nmiddle\n" in text and text.endswith("end\n")
    assert "![VAFA-3D q_max=20 on demo case img0001](docs/demo_case.png)" in text
    assert (tmp_path / "docs" / "demo_case.png").read_bytes() == b"png\x01"  # the first VAFA run's figure


def test_a_readme_without_the_markers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="demo-table"):
        readme_figures.replace_block("no markers", "demo-table", "x")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the demo's attacks are full size (1 training epoch only): minutes on a shared CPU
def test_the_whole_command_at_tiny_size(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert readme_figures.main(["--out", str(tmp_path / "demo"), "--epochs", "1", "--readme", str(readme),
                                "--docs", str(tmp_path / "docs")]) == 0
    assert "| clean |" in readme.read_text() and os.path.exists(tmp_path / "docs" / "demo_case.png")
