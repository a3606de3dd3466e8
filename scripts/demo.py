#!/usr/bin/env python
"""The whole tool on built-in phantom data, on CPU, in a few minutes.

1. writes a synthetic abdominal CT dataset in the Synapse layout (``data.phantom``);
2. trains a small UNETR on it (``run_normal_or_adv_training.py``);
3. attacks the validation cases with PGD (eps 4) and VAFA-3D (q_max 20, SSIM term on),
   VAFA in both of its last steps: the release's per-slice renormalisation and the
   paper's clip (``--vafa_normalise clip``) (``generate_adv_samples.py``, with ``--save_figures``);
4. prints one table comparing clean and adversarial metrics.

Each step prints the command line it runs, so the same commands can be typed by hand.
Everything lands under ``--out``; a second run reuses what is finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import generate_adv_samples  # noqa: E402
import run_normal_or_adv_training  # noqa: E402
from data.phantom import write_phantom_dataset  # noqa: E402

MODEL = ["--feature_size", "8", "--hidden_size", "96", "--mlp_dim", "192", "--num_heads", "4",
         "--roi_x", "48", "--roi_y", "48", "--roi_z", "32"]
ATTACKS = {
    "PGD eps=4": ["--attack_name", "pgd", "--eps", "4", "--alpha", "0.01", "--steps", "10"],
    "VAFA-3D q_max=20": ["--attack_name", "vafa-3d", "--q_max", "20", "--steps", "10",
                         "--block_size", "8", "8", "8", "--use_ssim_loss"],
    "VAFA-3D q_max=20, clip": ["--attack_name", "vafa-3d", "--q_max", "20", "--steps", "10",
                               "--block_size", "8", "8", "8", "--use_ssim_loss", "--vafa_normalise", "clip"],
}


def run(script, argv: list[str]) -> None:
    print(f"\n$ python {os.path.basename(script.__file__)} {shlex.join(argv)}", flush=True)
    code = script.main(argv)
    if code:
        sys.exit(code)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="folder for data, model and results")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = os.path.abspath(args.out)
    data_dir, model_dir, adv_dir = (os.path.join(out, name) for name in ("data", "model", "adversarial"))
    runtime = ["--workers", str(args.workers)] + (["--device", args.device] if args.device else [])
    data = ["--dataset", "btcv", "--data_dir", data_dir, "--json_list", "dataset.json",
            "--space_x", "1.5", "--space_y", "1.5", "--space_z", "2.0"]

    print(f"== 1/3 phantom CT dataset -> {data_dir}", flush=True)
    write_phantom_dataset(data_dir, n_train=6, n_val=2, shape=(96, 96, 48), spacing=(1.5, 1.5, 2.0), seed=0)

    checkpoint = os.path.join(model_dir, "model_best.pt")
    print(f"\n== 2/3 train a small UNETR for {args.epochs} epochs -> {model_dir}", flush=True)
    if os.path.exists(checkpoint) and os.path.exists(os.path.join(model_dir, "metrics.csv")):
        print(f"(reusing {checkpoint})")
    else:
        run(run_normal_or_adv_training, MODEL + data + runtime + [
            "--save_checkpoint", "--save_model_dir", model_dir, "--max_epochs", str(args.epochs),
            "--val_every", str(max(1, args.epochs // 4)), "--batch_size", "1", "--optim_lr", "4e-3",
            "--lrschedule", "constant", "--infer_overlap", "0.25", "--seed", "0"])

    print(f"\n== 3/3 attack the validation cases -> {adv_dir}", flush=True)
    reports = {}
    for title, attack in ATTACKS.items():
        argv_ = MODEL + data + runtime + attack + [
            "--use_pretrained", "--pretrained_path", checkpoint, "--gen_val_adv_mode",
            "--save_adv_images_dir", adv_dir, "--save_figures", "--infer_overlap", "0.25", "--seed", "0"]
        run(generate_adv_samples, argv_)
        run_dir = os.path.join(adv_dir, _subdir(argv_))
        with open(os.path.join(run_dir, "results.json")) as f:
            reports[title] = (json.load(f)["overall"], run_dir)

    print("\n" + comparison_table(reports))
    print(f"\nfigures: {', '.join(os.path.join(d, 'figures') for _, d in reports.values())}")
    print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def _subdir(argv: list[str]) -> str:
    from engine.cli import adv_subdir_name

    return adv_subdir_name(generate_adv_samples.parse_args(argv))


def comparison_table(reports: dict) -> str:
    def fmt(value, digits=1):
        return "n/a" if value is None else f"{value:.{digits}f}"

    first = next(iter(reports.values()))[0]
    rows = [
        "| | Dice % | HD95 (vox) | voxel success % | SSIM | PSNR dB | LPIPS-sim % |",
        "|---|---|---|---|---|---|---|",
        f"| clean | {fmt(first['dice_clean'])} | {fmt(first['hd95_clean'])} | – | – | – | – |",
    ]
    for title, (overall, _) in reports.items():
        rows.append(
            f"| {title} | {fmt(overall['dice_adv'])} | {fmt(overall['hd95_adv'])} | {fmt(overall['success_rate'])} "
            f"| {fmt(overall['ssim'], 4)} | {fmt(overall['psnr'])} | {fmt(overall.get('lpips_similarity'))} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
