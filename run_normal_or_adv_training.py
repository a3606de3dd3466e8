#!/usr/bin/env python
"""Train a segmentation model: normal training, vanilla adversarial training or VAFT.

Runs the paper's release command unchanged, e.g. VAFT of a clean model::

    python run_normal_or_adv_training.py --model_name unet-r --in_channels 1 --out_channel 14 \\
        --feature_size=16 --batch_size=3 --max_epochs 5000 --optim_lr=1e-4 --lrschedule=warmup_cosine \\
        --infer_overlap=0.5 --save_checkpoint --dataset btcv --data_dir=DATA \\
        --json_list=dataset_synapse_18_12.json --use_pretrained --pretrained_path=MODEL.pt \\
        --save_model_dir=OUT --val_every 15 --adv_training_mode --freq_reg_mode \\
        --attack_name vafa-3d --q_max 20 --steps 20 --block_size 32 32 32 --use_ssim_loss

Drop ``--freq_reg_mode`` for vanilla adversarial training, and both mode flags for normal
training. Continue a stopped run with ``--resume --resume_latest --checkpoint_dir OUT``.
SIGTERM/SIGUSR1 stop the run after the current batch (exit status 0); the last completed
epoch's ``model_latest.pt`` (with ``--save_checkpoint``) is what a resume continues.
"""

from __future__ import annotations

import sys

from engine import cli, jobs


def parse_args(argv=None):
    return cli.parse_training_args(__doc__.splitlines()[0], argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from training.run import run_training

    return jobs.run_script(jobs.training_job, run_training, args, "run_normal_or_adv_training.py")


if __name__ == "__main__":
    sys.exit(main())
