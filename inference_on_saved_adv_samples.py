#!/usr/bin/env python
"""Evaluate a model on clean volumes vs adversarial volumes saved earlier by generate_adv_samples.py.

Either ``--adv_run_dir`` names the generation run folder itself, whose ``args.json`` gives the
attack, data, model and checkpoint flags (any flag typed here wins), or, as in the paper's
release, the attack flags name the sub-folder of ``--adv_images_dir`` that holds the volumes
(``--no_sub_dir_adv_images`` to use that folder itself).
"""

from __future__ import annotations

import sys

from engine import cli, jobs


def parse_args(argv=None):
    return cli.parse_inference_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from engine.evaluation import run_inference

    return jobs.run_script(jobs.inference_job, run_inference, args, "inference_on_saved_adv_samples.py")


if __name__ == "__main__":
    sys.exit(main())
