#!/usr/bin/env python
"""Attack a trained segmentation model on a dataset split and report clean vs adversarial metrics.

Runs the paper's release commands unchanged, e.g.::

    python generate_adv_samples.py --model_name unet-r --feature_size=16 --infer_overlap=0.5 \\
        --dataset btcv --data_dir=DATA --json_list=dataset_synapse_18_12.json \\
        --use_pretrained --pretrained_path=MODEL.pt --gen_val_adv_mode \\
        --save_adv_images_dir=OUT --attack_name vafa-3d --q_max 20 --steps 20 \\
        --block_size 32 32 32 --use_ssim_loss
"""

from __future__ import annotations

import sys

from engine import cli, jobs


def parse_args(argv=None):
    return cli.parse_generation_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from engine.evaluation import run_generation

    return jobs.run_script(jobs.generation_job, run_generation, args, "generate_adv_samples.py")


if __name__ == "__main__":
    sys.exit(main())
