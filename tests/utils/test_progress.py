"""Logs a cluster can read: bars on a terminal only; a redirected run writes whole lines."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from tests.scripts.helpers import eval_flags, make_tiny_checkpoint, tiny_model_flags
from utils import progress as progress_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream, drawn", [(io.StringIO(), False), (_Terminal(), True)])
def test_a_bar_is_drawn_only_on_a_terminal(stream, drawn, monkeypatch):
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress_module.progress(range(3), desc="cases", file=stream)
    assert list(bar) == [0, 1, 2]
    bar.close()
    assert ("\r" in stream.getvalue()) is drawn
    assert progress_module.progress(range(3), enabled=False).disable


def _redirected(script: str, argv: list[str], log) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, script, *argv], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                               env=env)
    text = open(log, encoding="utf-8").read()
    assert code == 0, text
    return text


def test_redirected_generation_and_training_logs_hold_lines_only(tiny_dataset, tmp_path):
    checkpoint = make_tiny_checkpoint(str(tmp_path / "ckpt" / "model.pt"))
    text = _redirected("generate_adv_samples.py",
                       eval_flags(tiny_dataset, checkpoint, tmp_path / "adv", "--attack_name", "pgd", "--steps", "1"),
                       tmp_path / "gen.log")
    assert "\r" not in text and "\x1b" not in text
    assert "Dice clean" in text  # the case's own line
    text = _redirected("run_normal_or_adv_training.py",
                       ["--data_dir", tiny_dataset.data_dir, "--json_list", tiny_dataset.json_name, "--workers", "0",
                        "--device", "cpu", *tiny_model_flags(), "--max_epochs", "1", "--lrschedule", "constant",
                        "--val_every", "1", "--debugging"], tmp_path / "train.log")
    assert "\r" not in text and "\x1b" not in text
    assert "epoch 0/0" in text and "val Dice" in text
