"""Shared pieces of the end-to-end script tests: a tiny UNETR checkpoint and flag sets."""

from __future__ import annotations

import importlib.util
import os

import torch

from networks import build_model

# A UNETR small enough for CPU tests; ROI sides must be multiples of 16.
TINY_MODEL = dict(feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4)
TINY_ROI = (32, 32, 16)

ATTACK_FLAGS = {
    "vafa-3d": ["--block_size", "8", "8", "8", "--steps", "2", "--use_ssim_loss"],
    "vafa-2d": ["--block_size", "8", "8", "--steps", "2"],
    "pgd": ["--steps", "2", "--eps", "8"],
    "fgsm": ["--eps", "8"],
    "bim": ["--steps", "2", "--eps", "8"],
    "gn": ["--std", "8"],
    "segpgd": ["--steps", "2", "--eps", "8", "--random_start"],
    "cospgd": ["--steps", "2", "--eps", "8", "--norm", "l2"],
    "apgd": ["--steps", "2", "--eps", "8", "--loss", "js"],
    "worst-case": ["--steps", "1", "--eps", "8", "--attacks", "apgd-masked-ce", "segpgd"],
}


def tiny_model_flags() -> list[str]:
    flags = []
    for key, value in TINY_MODEL.items():
        flags += [f"--{key}", str(value)]
    for axis, size in zip("xyz", TINY_ROI):
        flags += [f"--roi_{axis}", str(size)]
    return flags


def make_tiny_checkpoint(path: str, seed: int = 0, out_channels: int = 14, **overrides) -> str:
    """Save a randomly initialised tiny UNETR the way the training script saves checkpoints."""
    torch.manual_seed(seed)
    cfg = dict(TINY_MODEL, **overrides)
    model = build_model("unet-r", in_channels=1, out_channels=out_channels, img_size=TINY_ROI, **cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"epoch": 0, "best_acc": 0.0, "epoch_acc": 0.0, "model_state_dict": model.state_dict()}, path)
    return path


def data_flags(dataset_dir: str, json_name: str) -> list[str]:
    return ["--data_dir", dataset_dir, "--json_list", json_name, "--workers", "0", "--device", "cpu",
            "--space_x", "1.5", "--space_y", "1.5", "--space_z", "2.0"]


def run_main(main, argv, capsys):
    """Run a script's ``main``; returns ``(exit code, stderr)`` whether it returned or exited."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def eval_flags(dataset, checkpoint: str, out, *extra: str) -> list[str]:
    """``generate_adv_samples.py`` flags: the tiny model on ``dataset``'s first validation case, saving under ``out``."""
    return (tiny_model_flags() + data_flags(dataset.data_dir, dataset.json_name)
            + ["--use_pretrained", "--pretrained_path", checkpoint, "--max_cases", "1", "--infer_overlap", "0",
               "--save_adv_images_dir", str(out), *extra])


def load_script(name: str, module_name: str | None = None):
    """``scripts/<name>.py`` loaded as a fresh module (the scripts are not a package)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(module_name or f"scripts_{name}", os.path.join(root, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
