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


def test_a_command_runs_once_per_demo_checkpoint(tmp_path, monkeypatch):
    """The record of finished commands: the same command on the same checkpoint is skipped, on another it runs."""
    calls = []

    class Child:
        def __init__(self, argv, cwd):
            calls.append(argv[-1])

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(readme_figures.subprocess, "Popen", Child)
    command = readme_figures.Command("generate_adv_samples.py", ("--steps", "3"))
    readme_figures.Runner(str(tmp_path), "sha-a").run(command)
    readme_figures.Runner(str(tmp_path), "sha-a").run(command)  # a rerun: recorded in done.json
    assert calls == ["3"]
    readme_figures.Runner(str(tmp_path), "sha-b").run(command)  # another demo model: run again
    assert calls == ["3", "3"]
    other = readme_figures.Command("generate_adv_samples.py", ("--steps", "4"))
    readme_figures.Runner(str(tmp_path), "sha-b").run(other)
    assert calls == ["3", "3", "4"]


def test_a_command_stopped_by_a_signal_stops_the_driver_and_is_not_recorded(tmp_path, monkeypatch):
    from utils.distributed import StopRequested

    class Child:
        def __init__(self, argv, cwd):
            pass

        def wait(self, timeout=None):
            return -15  # killed by SIGTERM

    monkeypatch.setattr(readme_figures.subprocess, "Popen", Child)
    runner = readme_figures.Runner(str(tmp_path), "sha")
    with pytest.raises(StopRequested) as stop:
        runner.run(readme_figures.Command("x.py", ()))
    assert stop.value.signum == 15 and not (tmp_path / "done.json").exists()


def test_a_stop_signal_to_the_driver_alone_is_passed_to_the_running_command(tmp_path, monkeypatch):
    """SIGTERM sent to the driver's pid only (not its process group): the running command gets it, the driver
    ends with StopRequested after the command has stopped, and nothing is recorded."""
    import signal

    from utils import distributed
    from utils.distributed import StopRequested

    sent = []

    class Child:
        def __init__(self, argv, cwd):
            self.waits = 0

        def wait(self, timeout=None):
            self.waits += 1
            if self.waits == 1:
                signal.raise_signal(signal.SIGTERM)  # arrives while the command runs
                raise readme_figures.subprocess.TimeoutExpired("x", timeout)
            return 143 if sent else 0

        def send_signal(self, signum):
            sent.append(signum)

    monkeypatch.setattr(readme_figures.subprocess, "Popen", Child)
    with distributed.stop_on_signals(), pytest.raises(StopRequested) as stop:
        readme_figures.Runner(str(tmp_path), "sha").run(readme_figures.Command("x.py", ()))
    assert sent == [signal.SIGTERM] and stop.value.signum == signal.SIGTERM
    assert not (tmp_path / "done.json").exists()


def _context(tmp_path):
    return readme_figures.Context(out=str(tmp_path / "demo"), work=str(tmp_path / "work"),
                                  robust_out=str(tmp_path / "robust"), docs=str(tmp_path / "docs"),
                                  readme=str(tmp_path / "README.md"), epochs=3)


def test_the_transfer_block_reads_the_matrix(tmp_path):
    _fake_demo(tmp_path / "demo")
    ctx = _context(tmp_path)
    matrix = tmp_path / "work" / "transfer" / "matrix"
    matrix.mkdir(parents=True)
    grid = lambda a, b, c, d: {"unetr": {"unetr": a, "unet": b}, "unet": {"unetr": c, "unet": d}}  # noqa: E731
    (matrix / "transfer.json").write_text(json.dumps({
        "surrogates": ["unetr", "unet"], "targets": ["unetr", "unet"], "dice_clean": grid(74.2, 60.0, 74.2, 60.0),
        "dice_adv": grid(70.6, 59.5, 73.0, 55.0), "drop": grid(3.6, 0.5, 1.2, 5.0)}))
    (matrix / "transfer.png").write_bytes(b"heat")
    runner = readme_figures.Runner(str(tmp_path / "work"), "sha")
    block = readme_figures.transfer_section(ctx, runner).render()["transfer"]
    assert "| surrogate \\ target | unetr (clean 74.2) | unet (clean 60.0) |" in block
    assert "| unetr | **70.6 (−3.6)** | 59.5 (−0.5) |" in block and "| unet | 73.0 (−1.2) | **55.0 (−5.0)** |" in block
    assert "python scripts/transfer_matrix.py" in block and (tmp_path / "docs" / "transfer_demo.png").read_bytes() == b"heat"


def test_the_stronger_attacks_block_bolds_the_lowest_dice_per_budget(tmp_path):
    _fake_demo(tmp_path / "demo")
    ctx = _context(tmp_path)
    folder = tmp_path / "work" / "stronger_attacks"
    folder.mkdir(parents=True)
    for name in ("tile", "volume"):
        rows = [{"attack": a, "eps": e, "steps": 20, "dice": d, "seconds": 1.0}
                for a, e, d in (("pgd", 4.0, 30.0), ("apgd-ce", 4.0, 29.0), ("pgd", 8.0, 20.0), ("apgd-ce", 8.0, 21.0))]
        (folder / f"{name}.json").write_text(json.dumps({"clean_dice": 33.0, "cases": 1, "shapes": [[48, 48, 32]],
                                                         "steps": 20, "rows": rows}))
    block = readme_figures.bench_section(ctx, readme_figures.Runner(str(tmp_path / "work"), "s")).render()
    text = block["stronger-attacks"]
    assert "| pgd | 30.00 | 1.0 | **20.00** | 1.0 |" in text and "| apgd-ce | **29.00** | 1.0 | 21.00 | 1.0 |" in text
    assert "Clean Dice 33.00 % (1 case, 48×48×32 voxels" in text


def test_the_table6_block_waits_for_a_finished_robust_demo(tmp_path):
    ctx = _context(tmp_path)
    table = tmp_path / "robust" / "table6"
    table.mkdir(parents=True)
    section = readme_figures.table6_section(ctx)
    assert section.render() is None  # nothing there
    cells = [{"status": "done"}, {"status": "pending"}]
    (table / "sweep.json").write_text(json.dumps({"command": "python scripts/robust_demo.py", "cells": cells}))
    assert section.render() is None  # unfinished
    cells[1]["status"] = "reused"
    (table / "sweep.json").write_text(json.dumps({"command": "python scripts/robust_demo.py", "cells": cells}))
    (table / "tables.md").write_text("## Table 6\n\n| x |\n\n## Ours beside the paper's (Dice %)\n\n| model | clean |\n"
                                     "|---|---|\n| M_clean | 70.0 (74.3) |\n\nnote\n\n## Settings\n\n- 12 epochs\n")
    (table / "robustness.png").write_bytes(b"fig")
    text = section.render()["table6"]
    assert "| M_clean | 70.0 (74.3) |" in text and "- 12 epochs" in text and "| x |" not in text
    assert (tmp_path / "docs" / "robust_demo_table6.png").read_bytes() == b"fig"


def test_the_precision_block_tabulates_attack_by_precision(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # fp16 only where a card runs it natively
    ctx = _context(tmp_path)
    out = tmp_path / "work" / "precision"
    out.mkdir(parents=True)
    cells = [{"attack": a, "param_precision": p, "dice_clean": 70.0 + i, "dice_adv": 60.0 + i + j / 10}
             for j, a in enumerate(("pgd", "vafa-3d", "apgd")) for i, p in enumerate(("fp32", "bf16", "fp16"))]
    (out / "sweep.json").write_text(json.dumps({"cells": cells}))
    text = readme_figures.precision_section(ctx, readme_figures.Runner(str(tmp_path / "work"), "s")).render()["precision"]
    assert "| (clean) | 70.00 | 71.00 | 72.00 |" in text and "| vafa-3d | 60.10 | 61.10 | 62.10 |" in text
    assert "Largest difference between the precisions for one attack: 2.00 Dice points." in text
    assert "--grid precision=fp32,bf16,fp16" in text


def test_the_precision_block_leaves_fp16_out_on_a_cpu(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    section = readme_figures.precision_section(_context(tmp_path), readme_figures.Runner(str(tmp_path / "work"), "s"))
    assert "precision=fp32,bf16" in section.commands[0].argv
    out = tmp_path / "work" / "precision"
    out.mkdir(parents=True)
    cells = [{"attack": a, "param_precision": p, "dice_clean": 70.0, "dice_adv": 60.0}
             for a in ("pgd", "vafa-3d", "apgd") for p in ("fp32", "bf16")]
    (out / "sweep.json").write_text(json.dumps({"cells": cells}))
    text = section.render()["precision"]
    assert "| attack | fp32 | bf16 |" in text and "fp16 is left out on a CPU" in text
