"""The flags of the three entry scripts, declared once: names, spellings and defaults as in the paper's release.

Its commands run unchanged; abbreviations stay allowed (``--out_channel`` is a prefix of
``--out_channels`` in the release's own README). The attack, model and dataset flags and choices come
from the registries (:mod:`attacks.registry`, :mod:`networks.registry`, :mod:`data.datasets`): a
registered attack or model with a new option gets its flag here without an edit. The checks and the
parsing are in :mod:`engine.cli`.
"""

from __future__ import annotations

import argparse
import os

from attacks import ATTACKS, all_attack_options
from data.datasets import DATASETS
from data.loading import CROP_SAMPLINGS
from networks import BLENDS, MODELS, PRECISIONS, model_options
from utils.options import add_options

RUNTIME_FLAGS = frozenset({
    "device", "workers", "overwrite", "debugging", "verbose", "sw_batch_size",
    "save_figures", "max_cases", "distributed", "world_size", "rank", "dist_url", "dist_backend",
    "results_dir", "exp_name", "use_normal_dataset", "save_adv_images_dir", "finish_cases", "save_predictions", "skip_empty_cases",
})
"""Flags that do not change a run's numbers: a run folder may be resumed with other values.
(``--attack_batch_size`` is not among them: the tiles batched together share one early stop
and one random draw, so it changes the adversarial volumes.)"""

VOLUME_FLAGS = ("dataset", "a_min", "a_max", "b_min", "b_max", "space_x", "space_y", "space_z")
"""Flags that decide how a case is loaded: inference must use the generation run's values."""

PATH_FLAGS = frozenset({"data_dir", "json_list", "pretrained_path", "adv_images_dir", "nnunet_model_dir", "bundle_dir"})
"""Flags holding paths: a resume compares them as canonical paths."""

DEFAULT_MODEL = "unet-r"
"""The release's model: run-folder names name any other."""

LR_SCHEDULES = ("warmup_cosine", "cosine_anneal", "constant", "none")
"""``--lrschedule`` values: the release's two schedules, and two names of its constant rate (the release
took any other value as constant; here a typo is refused)."""


def default_workers() -> int:
    """Data-loading workers by default: one per CPU this process may use beyond the main one, at most 4
    (the release's 8 oversubscribe a small machine and its shared memory)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


# --------------------------------------------------------------------------- flag groups


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model_name", default=DEFAULT_MODEL, choices=tuple(MODELS), help="network architecture")
    g.add_argument("--in_channels", default=None, type=int, help="input channels (default: 1, or the model folder's)")
    g.add_argument("--out_channels", default=None, type=int,
                   help="output classes, background included (default: the dataset's class count, btcv 14)")
    add_options(g, model_options())
    g.add_argument("--res_block", action="store_true", help="accepted for compatibility; UNETR always uses residual blocks")
    g.add_argument("--conv_block", action="store_true", help="accepted for compatibility; UNETR always uses conv blocks")
    g.add_argument("--roi_x", default=None, type=int, help="ROI size along x (H) (default: 96, or the model folder's patch)")
    g.add_argument("--roi_y", default=None, type=int, help="ROI size along y (W) (default: 96, or the model folder's patch)")
    g.add_argument("--roi_z", default=None, type=int, help="ROI size along z (D) (default: 96, or the model folder's patch)")
    g.add_argument("--infer_overlap", default=None, type=float, help="sliding-window inference overlap (default: 0.5)")
    g.add_argument("--sw_blend", default=None, choices=tuple(BLENDS),
                   help="sliding-window blending: constant (MONAI, the release) or nnunet (nnU-Net's Gaussian "
                        "weights and window placement); default: constant, or the model's (nnunet: nnunet)")
    g.add_argument("--sw_batch_size", default=1, type=int, help="windows per batch in sliding-window inference")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    described = "; ".join(f"{name} = {spec.description}" for name, spec in DATASETS.items())
    g.add_argument("--dataset", default="btcv", choices=tuple(DATASETS), help=described)
    g.add_argument("--data_dir", default=None, type=str, help="dataset folder (imagesTr/, labelsTr/, JSON list)")
    g.add_argument("--json_list", default="dataset_synapse_18_12.json", type=str, help="Decathlon-style JSON split, relative to --data_dir or absolute")
    g.add_argument("--a_min", default=None, type=float,
                   help="intensity window lower bound (default: the dataset's, btcv -175 HU; acdc: per-volume percentiles)")
    g.add_argument("--a_max", default=None, type=float, help="intensity window upper bound (default: the dataset's, btcv 250 HU)")
    g.add_argument("--b_min", default=0.0, type=float, help="scaled lower bound")
    g.add_argument("--b_max", default=1.0, type=float, help="scaled upper bound")
    g.add_argument("--space_x", default=None, type=float, help="resampled spacing along x (mm) (default: 1.5, or the model folder's)")
    g.add_argument("--space_y", default=None, type=float, help="resampled spacing along y (mm) (default: 1.5, or the model folder's)")
    g.add_argument("--space_z", default=None, type=float, help="resampled spacing along z (mm) (default: 2.0, or the model folder's)")
    g.add_argument("--workers", default=default_workers(), type=int,
                   help="data-loading worker processes (default: CPUs available - 1, at most 4; the release: 8)")
    g.add_argument("--RandFlipd_prob", default=0.2, type=float, help="random flip probability")
    g.add_argument("--RandRotate90d_prob", default=0.2, type=float, help="random 90-degree rotation probability")
    g.add_argument("--RandScaleIntensityd_prob", default=0.1, type=float, help="random intensity scale probability")
    g.add_argument("--RandShiftIntensityd_prob", default=0.1, type=float, help="random intensity shift probability")
    g.add_argument("--use_normal_dataset", action="store_true", help="plain monai Dataset instead of CacheDataset")
    g.add_argument("--crop_sampling", default="posneg", choices=CROP_SAMPLINGS,
                   help="training crops: posneg (release: centred on foreground or background alike) or classes "
                        "(centred on each class alike: small organs as often as the liver)")
    g.add_argument("--nnunet_cases", default="fold", choices=("fold", "test"),
                   help="--dataset nnunet: fold (the first --nnunet_fold's validation cases of splits_final.json; its "
                        "training cases with --gen_train_adv_mode) or test (every case of imagesTs/, with labelsTs/)")


def add_pretrained_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("weights")
    g.add_argument("--use_pretrained", action="store_true", help="initialise the model from --pretrained_path")
    g.add_argument("--pretrained_path", default="", type=str, help="full path of a checkpoint (.pt)")


def add_attack_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("attack")
    # the registry's first entry, VAFA-3D, is the release's default
    g.add_argument("--attack_name", default=next(iter(ATTACKS)), choices=tuple(ATTACKS), help="attack")
    add_options(g, all_attack_options())
    g.add_argument("--target_class", default=0, type=int, help="class every voxel is pushed to under --targeted (0 = background)")
    g.add_argument("--attack_batch_size", default=6, type=int,
                   help="ROI tiles attacked together (release: 6); part of a run's settings, since tiles batched "
                        "together share the attack's early stop and random draws")


def add_runtime_args(parser: argparse.ArgumentParser, attacks: bool = True) -> None:
    """Device, launch, precision flags; ``attacks=False`` leaves those only an attacking script uses out of ``--help``."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default=None, type=str, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda when available)")
    g.add_argument("--seed", default=0, type=int, help="random seed")
    g.add_argument("--distributed", action="store_true", help="several processes (torchrun/srun set the rest; without a launcher, spawn one per GPU)")
    g.add_argument("--world_size", default=1, type=int, help="nodes (release's mp.spawn launch)")
    g.add_argument("--rank", default=0, type=int, help="node rank (release's mp.spawn launch)")
    g.add_argument("--dist-url", default="tcp://127.0.0.1:23456", type=str, help="rendezvous URL (release's mp.spawn launch)")
    g.add_argument("--dist-backend", default=None, type=str, help="nccl on GPU, gloo on CPU when unset")
    g.add_argument("--verbose", action="store_true", help="debug logging")
    g.add_argument("--precision", default=None, choices=tuple(PRECISIONS),
                   help="precision of the model's passes (autocast; losses, VAFA's transforms and metrics stay "
                        "float32). Default: fp32 for attacks and inference; training: the release's mixed precision "
                        "(fp16 with a gradient scaler on CUDA, fp32 on CPU, fp32 everywhere with --noamp)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (pays a one-off compile time)")
    g.add_argument("--fused_dice_ce", action="store_true",
                   help="the Dice-CE of attacks and training from one softmax with a written-out gradient: about "
                        "2x faster on a CPU, same formula, other float rounding than the release's MONAI DiceCELoss"
                   if attacks else argparse.SUPPRESS)  # inference attacks nothing: accepted, not listed


def add_inference_runtime_args(parser: argparse.ArgumentParser) -> None:
    add_runtime_args(parser, attacks=False)


def add_eval_output_args(parser: argparse.ArgumentParser, inference: bool = False) -> None:
    """Splits and outputs of the evaluation scripts; ``inference=True``: inference's flags only."""
    g = parser.add_argument_group("outputs")
    g.add_argument("--gen_val_adv_mode", action="store_true", help="use the validation split (default)")
    g.add_argument("--gen_train_adv_mode", action="store_true", help="use the training split")
    # generation-only flags: inference accepts them (one flag set may serve both scripts) but does not list them
    hidden = argparse.SUPPRESS if inference else None
    g.add_argument("--save_adv_images_dir", default=None, type=str,
                   help=hidden or "parent folder of the run folder (generation)")
    g.add_argument("--adv_images_dir", default="", type=str, help="parent folder holding saved adversarial volumes (inference)")
    if inference:
        g.add_argument("--adv_run_dir", default=None, type=str,
                       help="the generation run folder itself (holding args.json and imagesTsAdv/): its attack, data, "
                            "model and checkpoint flags are used unless typed here (replaces --adv_images_dir)")
    g.add_argument("--no_sub_dir_adv_images", action="store_true", help="use the given folder itself, not the attack-named sub-folder")
    g.add_argument("--results_dir", default=None, type=str,
                   help="inference: where results go (default: <adv folder>/inference/<checkpoint's parent folder>_<checkpoint name>)")
    g.add_argument("--debugging", action="store_true", help="save nothing, create no folder")
    g.add_argument("--exp_name", default=None, type=str, help="experiment name (recorded in args.json)")
    g.add_argument("--save_dtype", default="uint8", choices=("uint8", "float32"),
                   help=hidden or "saved volumes: uint8 x255 (release) or float32 in [0,1]")
    g.add_argument("--overwrite", action="store_true", help="start the run folder afresh instead of skipping finished cases")
    g.add_argument("--save_figures", action="store_true", help="one PNG per case: slices, perturbation, predictions")
    g.add_argument("--save_predictions", action="store_true",
                   help="write each case's clean and adversarial label maps on the grid of its file (overlaying "
                        "the original image) into pred{Ts,Tr}Clean/ and pred{Ts,Tr}Adv/ of the run folder")
    g.add_argument("--max_cases", default=None, type=int, help="evaluate only the first N cases")
    g.add_argument("--skip_empty_cases", action="store_true",
                   help="a case with nothing to segment (empty after the intensity window and the foreground crop) "
                        "is recorded under 'skipped' in results.json, with the reason, instead of stopping the run")
    g.add_argument("--finish_cases", default="auto", choices=("auto", "background", "inline"),
                   help="finish each case (metrics, saved files) in a background thread while the next case is "
                        "attacked, or inline before it; auto: background on an accelerator, inline on a CPU (where "
                        "the thread would compete for the cores). Same numbers either way")


def add_inference_output_args(parser: argparse.ArgumentParser) -> None:
    add_eval_output_args(parser, inference=True)


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Flags of the training script: optimisation, checkpoints and run folder, training modes."""
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", default=1, type=int, help="volumes per step and process (each yields 4 ROI crops)")
    g.add_argument("--max_epochs", default=5000, type=int, help="training epochs")
    g.add_argument("--val_every", default=100, type=int, help="validate after every N-th epoch ((epoch + 1) %% N == 0)")
    g.add_argument("--optim_name", default="adamw", choices=("adamw", "adam", "sgd"), help="optimiser")
    g.add_argument("--optim_lr", default=1e-4, type=float, help="learning rate")
    g.add_argument("--reg_weight", default=1e-5, type=float, help="weight decay")
    g.add_argument("--momentum", default=0.99, type=float, help="SGD momentum (Nesterov)")
    g.add_argument("--lrschedule", default="warmup_cosine", choices=LR_SCHEDULES,
                   help="warmup_cosine (per epoch, linear warm-up from 0), cosine_anneal, or a constant rate "
                        "(constant or none)")
    g.add_argument("--warmup_epochs", default=50, type=int, help="linear warm-up epochs of warmup_cosine")
    g.add_argument("--noamp", action="store_true", help="no mixed precision on CUDA (CPU never uses it)")
    g.add_argument("--smooth_nr", default=0.0, type=float, help="Dice numerator smoothing of the Dice-CE loss")
    g.add_argument("--smooth_dr", default=1e-6, type=float, help="Dice denominator smoothing of the Dice-CE loss")

    g = parser.add_argument_group("checkpoints and run folder")
    g.add_argument("--save_checkpoint", action="store_true", help="write model_latest.pt every epoch and model_best.pt on a new best")
    g.add_argument("--save_model_dir", default=None, type=str,
                   help="parent of the run folder (adversarial training adds an attack-named sub-folder)")
    g.add_argument("--no_sub_dir_model", action="store_true", help="use --save_model_dir/--checkpoint_dir itself, no attack-named sub-folder")
    g.add_argument("--resume", action="store_true", help="continue a run from --checkpoint_dir (with --resume_latest or --resume_best)")
    g.add_argument("--resume_latest", action="store_true", help="resume from model_latest.pt")
    g.add_argument("--resume_best", action="store_true", help="resume from model_best.pt")
    g.add_argument("--resume_but_restart", action="store_true",
                   help="take only the checkpoint's weights and start a new run at epoch 0 in --save_model_dir")
    g.add_argument("--checkpoint_dir", default=None, type=str,
                   help="parent of the run folder to resume (the --save_model_dir of that run)")
    g.add_argument("--logdir", default=None, type=str, help="TensorBoard folder (default: the run folder)")
    g.add_argument("--debugging", action="store_true", help="save nothing, create no folder")
    g.add_argument("--exp_name", default=None, type=str, help="experiment name (recorded in args.json and the log)")

    g = parser.add_argument_group("training modes")
    g.add_argument("--adv_training_mode", action="store_true", help="adversarial training: Dice-CE on attacked crops")
    g.add_argument("--freq_reg_mode", action="store_true",
                   help="VAFT (needs --adv_training_mode): clean + adversarial Dice-CE + frequency-consistency loss")
    g.add_argument("--freq_reg_norm", default="relative", choices=("relative", "l1"),
                   help="frequency-consistency loss: relative L1 of the DCT spectra (release) or plain L1 (paper's Eq. 4)")
    g.add_argument("--freq_reg_weight", default=1.0, type=float, help="weight of the frequency-consistency loss")
    g.add_argument("--val_attack", action="store_true",
                   help="also report validation Dice under the configured attack (first --val_attack_cases cases)")
    g.add_argument("--val_attack_cases", default=2, type=int,
                   help="validation cases attacked with --val_attack (bounds its cost)")
