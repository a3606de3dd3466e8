"""nnU-Net's own predictions as the oracle of ours: a phantom nnU-Net, planned, preprocessed and trained by
nnU-Net itself, predicted by nnU-Net and by this tool, voxel by voxel.

Steps (all in ``--out``):

1. phantom CT cases in nnU-Net's raw layout (``data.phantom.write_nnunet_raw_dataset``; two voxel spacings, so
   some cases are resampled);
2. ``nnUNetv2_plan_and_preprocess`` (nnU-Net's planner, 3d_fullres);
3. a short ``nnUNetTrainer`` run per fold on the CPU (``--iterations`` training iterations, one epoch, initial
   learning rate ``--lr``), then
   nnU-Net's own validation of the fold (``fold_K/validation/*.nii.gz``, made with mirroring);
4. our clean predictions (``generate_adv_samples.py --model_name nnunet --dataset nnunet --save_predictions``)
   of fold 0's validation cases, compared with: nnU-Net's validation predictions (``--tta mirror``, fold 0),
   ``nnUNetPredictor`` without mirroring (fold 0), and ``nnUNetPredictor`` with folds 0 and 1 (mirroring).

Prints one line per comparison: the share of voxels where the two label maps agree, per case and overall.

    python scripts/nnunet_oracle.py --out runs/nnunet_oracle --iterations 60 --lr 0.03
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DATASETS = {1: ("998", "Dataset998_Phantom"), 2: ("997", "Dataset997_Phantom2ch")}
"""nnU-Net dataset id and folder of the 1-channel (CT) and the 2-channel (CT + MR-like) phantom."""
CONFIGURATION = "3d_fullres"

TRAIN = """
import sys, torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
pre, fold, iterations, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
plans = load_json(pre + '/nnUNetPlans.json')
plans['continue_training'] = False  # what nnunetv2.run.run_training sets before building the trainer
trainer = nnUNetTrainer(plans, '3d_fullres', fold, load_json(pre + '/dataset.json'), device=torch.device('cpu'))
trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch, trainer.num_epochs = iterations, 2, 1
trainer.initial_lr = lr
trainer.run_training()
trainer.perform_actual_validation(False)
"""


def nnunet_env(out: str) -> dict:
    env = dict(os.environ, nnUNet_raw=os.path.join(out, "raw"), nnUNet_preprocessed=os.path.join(out, "preprocessed"),
               nnUNet_results=os.path.join(out, "results"), nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1",
               nnUNet_compile="false")
    return env


def prepare(out: str, iterations: int, folds: Sequence[int], n_cases: int, seed: int, lr: float,
            channels: int = 1) -> str:
    """Raw dataset, nnU-Net's plans and preprocessing, trained folds; returns the trained-model folder."""
    from data.phantom_nnunet import write_nnunet_raw_dataset

    env = nnunet_env(out)
    number, dataset = DATASETS[channels]
    raw = os.path.join(env["nnUNet_raw"], dataset)
    model = os.path.join(env["nnUNet_results"], dataset, f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}")
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        write_nnunet_raw_dataset(raw, n_cases=n_cases, shape=(48, 48, 24),
                                 spacings=[(1.5, 1.5, 2.0), (1.5, 1.5, 2.0), (1.3, 1.3, 2.5)], seed=seed,
                                 organs=[6, 1], channels=channels)
    pre = os.path.join(env["nnUNet_preprocessed"], dataset)
    if not os.path.isfile(os.path.join(pre, "nnUNetPlans.json")):
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess"), "-d", number,
                        "-c", CONFIGURATION, "-np", "1", "--verify_dataset_integrity"],
                       env=dict(env, nnUNet_n_proc_DA="1"), check=True)  # the planner sets torch threads from it
    for fold in folds:
        if not os.path.isfile(os.path.join(model, f"fold_{fold}", "checkpoint_final.pth")):
            subprocess.run([sys.executable, "-c", TRAIN, pre, str(fold), str(iterations), str(lr)], env=env,
                           check=True)
    return model


def nnunet_predictions(model: str, cases: Sequence[str], raw: str, folds: Sequence[int], mirror: bool,
                       out: str, channels: int = 1) -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model, use_folds=tuple(folds))
    os.makedirs(out, exist_ok=True)
    files = [[f"{raw}/imagesTr/{c}_{k:04d}.nii.gz" for k in range(channels)] for c in cases]
    predictor.predict_from_files_sequential(files, out,
                                            save_probabilities=False, overwrite=True,
                                            folder_with_segs_from_prev_stage=None)


def our_predictions(model: str, raw: str, folds: Sequence[int], tta: str, out: str) -> str:
    import generate_adv_samples as gen

    argv = ["--model_name", "nnunet", "--nnunet_model_dir", model, "--nnunet_fold", *map(str, folds),
            "--dataset", "nnunet", "--data_dir", raw, "--tta", tta, "--attack_name", "fgsm", "--eps", "1",
            "--save_predictions", "--save_adv_images_dir", out, "--no_sub_dir_adv_images", "--workers", "0",
            "--device", "cpu"]
    if gen.main(argv) != 0:
        raise SystemExit(f"generate_adv_samples.py failed: {' '.join(argv)}")
    return os.path.join(out, "predTsClean")


def agreement(ours: str, theirs: str, cases: Sequence[str]) -> dict:
    """Share of equal voxels per case and overall (the files must have equal grids)."""
    import numpy as np
    import SimpleITK as sitk

    per_case, equal, total = {}, 0, 0
    for case in cases:
        a = sitk.ReadImage(os.path.join(ours, f"{case}.nii.gz"))
        b = sitk.ReadImage(os.path.join(theirs, f"{case}.nii.gz"))
        if a.GetSize() != b.GetSize() or not np.allclose(a.GetSpacing(), b.GetSpacing()):
            raise SystemExit(f"{case}: our prediction's grid differs from nnU-Net's")
        x, y = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
        per_case[case] = float((x == y).mean())
        equal, total = equal + int((x == y).sum()), total + x.size
        per_case[case + " classes"] = sorted(int(v) for v in np.unique(y))
    return {"overall": equal / total, "per_case": per_case}


def run(out: str, iterations: int = 20, n_cases: int = 6, seed: int = 0, lr: float = 0.01, channels: int = 1) -> dict:
    """The whole comparison; returns ``{comparison: agreement}`` and writes it to ``out/agreement.json``."""
    out = os.path.abspath(out)
    env = nnunet_env(out)
    os.environ["nnUNet_preprocessed"] = env["nnUNet_preprocessed"]  # where --dataset nnunet finds the splits
    model = prepare(out, iterations, (0, 1), n_cases, seed, lr, channels)
    dataset = DATASETS[channels][1]
    raw = os.path.join(env["nnUNet_raw"], dataset)
    with open(os.path.join(env["nnUNet_preprocessed"], dataset, "splits_final.json")) as f:
        cases = json.load(f)[0]["val"]
    results = {}
    ours = our_predictions(model, raw, (0,), "mirror", os.path.join(out, "ours_fold0_mirror"))
    results["fold 0, mirroring: ours vs nnU-Net's own validation"] = agreement(
        ours, os.path.join(model, "fold_0", "validation"), cases)
    ours = our_predictions(model, raw, (0,), "none", os.path.join(out, "ours_fold0_none"))
    nnunet_predictions(model, cases, raw, (0,), False, os.path.join(out, "nnunet_fold0_none"), channels)
    results["fold 0, no mirroring: ours vs nnUNetPredictor"] = agreement(
        ours, os.path.join(out, "nnunet_fold0_none"), cases)
    ours = our_predictions(model, raw, (0, 1), "mirror", os.path.join(out, "ours_folds01_mirror"))
    nnunet_predictions(model, cases, raw, (0, 1), True, os.path.join(out, "nnunet_folds01_mirror"), channels)
    results["folds 0+1, mirroring: ours vs nnUNetPredictor"] = agreement(
        ours, os.path.join(out, "nnunet_folds01_mirror"), cases)
    with open(os.path.join(out, "agreement.json"), "w") as f:
        json.dump(results, f, indent=2)
    for name, value in results.items():
        print(f"{name}: {100 * value['overall']:.3f} % of voxels agree "
              f"({', '.join(f'{k} {100 * v:.3f}' for k, v in value['per_case'].items() if not k.endswith('classes'))})")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="work folder (raw, preprocessed, results, predictions)")
    parser.add_argument("--iterations", type=int, default=20, help="nnU-Net training iterations per fold")
    parser.add_argument("--cases", type=int, default=6, help="phantom cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.01, help="nnU-Net's initial learning rate (its default 0.01)")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 2),
                        help="1: CT; 2: CT and an MR-like channel that nnU-Net z-scores")
    args = parser.parse_args(argv)
    run(args.out, args.iterations, args.cases, args.seed, args.lr, args.channels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
