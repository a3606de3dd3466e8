"""The command line: flags of the three entry scripts, their checks, and typed settings.

Flag names, spellings and defaults follow the paper's release, so its commands run
unchanged; abbreviations stay allowed (``--out_channel`` is a prefix of ``--out_channels``
in the release's own README). The attack, model and dataset flags and choices come from
the registries (:mod:`attacks.registry`, :mod:`networks.registry`, :mod:`data.datasets`):
a registered attack or model with a new option gets its flag here without an edit.

This is the only module that reads the parsed ``Namespace``: each script parses, then
calls one of :func:`generation_job`, :func:`inference_job`, :func:`training_job`, and hands
the typed result to the library.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Iterable, Sequence

from attacks import ATTACKS, AttackSettings, all_attack_options, get_attack_class
from data.datasets import DATASETS, get_dataset
from data.loading import CROP_SAMPLINGS, DataSettings, split_for_mode
from networks import BLENDS, MODELS, PRECISIONS, ModelSettings, WindowSettings, get_model_entry, model_options
from utils.distributed import LaunchSettings
from utils.errors import EXIT_USER_ERROR, UserError
from utils.io import to_jsonable
from utils.options import add_options, option_values

logger = logging.getLogger(__name__)

RUNTIME_FLAGS = frozenset({
    "device", "workers", "overwrite", "debugging", "verbose", "sw_batch_size",
    "save_figures", "max_cases", "distributed", "world_size", "rank", "dist_url", "dist_backend",
    "results_dir", "exp_name", "use_normal_dataset", "save_adv_images_dir", "finish_cases", "save_predictions",
})
"""Flags that do not change a run's numbers: a run folder may be resumed with other values.
(``--attack_batch_size`` is not among them: the tiles batched together share one early stop
and one random draw, so it changes the adversarial volumes.)"""

VOLUME_FLAGS = ("dataset", "a_min", "a_max", "b_min", "b_max", "space_x", "space_y", "space_z")
"""Flags that decide how a case is loaded: inference must use the generation run's values."""

PATH_FLAGS = frozenset({"data_dir", "json_list", "pretrained_path", "adv_images_dir", "nnunet_model_dir", "bundle_dir"})
"""Flags holding paths: a resume compares them as canonical paths."""

LR_SCHEDULES = ("warmup_cosine", "cosine_anneal")
"""``--lrschedule`` values with a schedule; any other value trains at a constant rate (release)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line (no usage dump), exit status 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(description: str) -> ArgumentParser:
    return ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


# --------------------------------------------------------------------------- flag groups


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model_name", default="unet-r", choices=tuple(MODELS), help="network architecture")
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
    g.add_argument("--workers", default=8, type=int, help="data-loading worker processes")
    g.add_argument("--RandFlipd_prob", default=0.2, type=float, help="random flip probability")
    g.add_argument("--RandRotate90d_prob", default=0.2, type=float, help="random 90-degree rotation probability")
    g.add_argument("--RandScaleIntensityd_prob", default=0.1, type=float, help="random intensity scale probability")
    g.add_argument("--RandShiftIntensityd_prob", default=0.1, type=float, help="random intensity shift probability")
    g.add_argument("--use_normal_dataset", action="store_true", help="plain monai Dataset instead of CacheDataset")
    g.add_argument("--crop_sampling", default="posneg", choices=CROP_SAMPLINGS,
                   help="training crops: posneg (release: centred on foreground or background alike) or classes "
                        "(centred on each class alike: small organs as often as the liver)")


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


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
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
                        "2x faster on a CPU, same formula, other float rounding than the release's MONAI DiceCELoss")


def add_eval_output_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("outputs")
    g.add_argument("--gen_val_adv_mode", action="store_true", help="use the validation split (default)")
    g.add_argument("--gen_train_adv_mode", action="store_true", help="use the training split")
    g.add_argument("--save_adv_images_dir", default=None, type=str, help="parent folder of the run folder (generation)")
    g.add_argument("--adv_images_dir", default="", type=str, help="parent folder holding saved adversarial volumes (inference)")
    g.add_argument("--no_sub_dir_adv_images", action="store_true", help="use the given folder itself, not the attack-named sub-folder")
    g.add_argument("--results_dir", default=None, type=str, help="inference: where results go (default: <adv folder>/inference/<checkpoint name>)")
    g.add_argument("--debugging", action="store_true", help="save nothing, create no folder")
    g.add_argument("--exp_name", default=None, type=str, help="experiment name (recorded in args.json)")
    g.add_argument("--save_dtype", default="uint8", choices=("uint8", "float32"), help="saved volumes: uint8 x255 (release) or float32 in [0,1]")
    g.add_argument("--overwrite", action="store_true", help="start the run folder afresh instead of skipping finished cases")
    g.add_argument("--save_figures", action="store_true", help="one PNG per case: slices, perturbation, predictions")
    g.add_argument("--save_predictions", action="store_true",
                   help="write each case's clean and adversarial label maps on the grid of its file (overlaying "
                        "the original image) into pred{Ts,Tr}Clean/ and pred{Ts,Tr}Adv/ of the run folder")
    g.add_argument("--max_cases", default=None, type=int, help="evaluate only the first N cases")
    g.add_argument("--finish_cases", default="auto", choices=("auto", "background", "inline"),
                   help="finish each case (metrics, saved files) in a background thread while the next case is "
                        "attacked, or inline before it; auto: background on an accelerator, inline on a CPU (where "
                        "the thread would compete for the cores). Same numbers either way")


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
    g.add_argument("--lrschedule", default="warmup_cosine", type=str,
                   help="warmup_cosine (per epoch, linear warm-up from 0) or cosine_anneal; anything else: constant rate")
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


# --------------------------------------------------------------------------- checks


MODEL_FLAG_FALLBACKS = dict(in_channels=1, roi_x=96, roi_y=96, roi_z=96, space_x=1.5, space_y=1.5, space_z=2.0,
                           infer_overlap=0.5, sw_blend="constant")
"""Values of the model-dependent flags left unset, when the model supplies none (the release's defaults)."""


def fill_model_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Flags the user left unset take the model's values (a trained-model folder's patch, spacing ...),
    else :data:`MODEL_FLAG_FALLBACKS`."""
    entry = get_model_entry(args.model_name)
    supplied: dict = {}
    if entry.defaults is not None:
        try:
            supplied = entry.defaults(option_values(entry.options, args))
        except ValueError as err:  # UserError included
            parser.error(str(err))
    for name, value in {**MODEL_FLAG_FALLBACKS, **supplied}.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def check_model_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Model and data flags: required folder, ranges, the model's and the dataset's defaults filled in."""
    fill_model_defaults(args, parser)
    if not args.data_dir:
        parser.error("--data_dir is required: the dataset folder holding imagesTr/, labelsTr/ and the JSON list")
    if not 0 <= args.infer_overlap < 1:
        parser.error(f"--infer_overlap must be in [0, 1), got {args.infer_overlap}")
    spec = get_dataset(args.dataset)
    if args.out_channels is None:
        args.out_channels = spec.num_classes
    if args.a_min is None and args.a_max is None and spec.window is not None:
        args.a_min, args.a_max = spec.window
    if (args.a_min is None) != (args.a_max is None):
        parser.error("--a_min and --a_max go together: give both (an intensity window) or neither")
    if args.a_min is not None and not args.a_min < args.a_max:
        parser.error(f"--a_min must be below --a_max, got {args.a_min} and {args.a_max}")
    if not 0 <= args.b_min < args.b_max <= 1:
        parser.error(f"--b_min/--b_max must satisfy 0 <= b_min < b_max <= 1 (attacks and saved volumes assume "
                     f"images in [0, 1]), got {args.b_min} and {args.b_max}")
    for name in ("space_x", "space_y", "space_z"):
        value = getattr(args, name)
        if not (value > 0 and value != float("inf")):
            parser.error(f"--{name} must be a finite spacing > 0 (mm), got {value}")
    for name in ("RandFlipd_prob", "RandRotate90d_prob", "RandScaleIntensityd_prob", "RandShiftIntensityd_prob"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} must be a probability in [0, 1], got {getattr(args, name)}")
    for name in ("in_channels", "out_channels", "roi_x", "roi_y", "roi_z", "sw_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.workers < 0:
        parser.error(f"--workers must not be negative, got {args.workers}")
    try:
        option_values(get_model_entry(args.model_name).options, args)
    except ValueError as err:
        parser.error(str(err))
    _check_model_builds(args, parser)


def _check_model_builds(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Run the builder's own checks (ROI rules ...) at parse time, on the meta device (no memory).

    A builder that cannot run on the meta device (one that reads tensor values while it
    builds) is checked when the run builds the real model instead.
    """
    import torch

    try:
        with torch.device("meta"):
            model_settings(args).build()
    except ValueError as err:  # UserError included
        parser.error(str(err))
    except Exception:  # noqa: BLE001 - not meta-compatible: checked at build time
        logger.debug("model %s not checked on the meta device", args.model_name)


def check_attack_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The attack's own checks (its constructor and tile check) as one-line parser errors;
    list-valued options (``--block_size``) become tuples, as the release's checks left them."""
    for option in all_attack_options():
        if isinstance(getattr(args, option.name, None), list):
            setattr(args, option.name, tuple(getattr(args, option.name)))
    try:
        settings = attack_settings(args)
        settings.validate((args.roi_x, args.roi_y, args.roi_z))
    except ValueError as err:
        parser.error(str(err))
    if args.attack_batch_size < 1:
        parser.error(f"--attack_batch_size must be at least 1, got {args.attack_batch_size}")
    if settings.targeted and not 0 <= args.target_class < args.out_channels:
        parser.error(f"--target_class must be in [0, {args.out_channels - 1}], got {args.target_class}")


def check_pretrained_args(args: argparse.Namespace, parser: argparse.ArgumentParser, required: bool) -> None:
    if args.pretrained_path:
        args.use_pretrained = True
    elif get_model_entry(args.model_name).loads_weights:
        return  # the model's own folder holds its weights
    elif args.use_pretrained or required:
        parser.error("--pretrained_path is required: the full path of the model checkpoint (.pt)")


def check_eval_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    check_pretrained_args(args, parser, required=True)
    if args.gen_val_adv_mode and args.gen_train_adv_mode:
        parser.error("--gen_val_adv_mode and --gen_train_adv_mode exclude each other; pick one split")
    if args.max_cases is not None and args.max_cases < 1:
        parser.error(f"--max_cases must be at least 1, got {args.max_cases}")


def check_training_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Conflicts among the training flags (one-line ``parser.error``, exit status 2)."""
    check_pretrained_args(args, parser, required=False)
    if args.freq_reg_mode and not args.adv_training_mode:
        parser.error("--freq_reg_mode needs --adv_training_mode (VAFT is adversarial training with the frequency loss)")
    if (args.resume_latest or args.resume_best or args.resume_but_restart) and not args.resume:
        parser.error("--resume_latest/--resume_best/--resume_but_restart need --resume")
    if args.resume:
        if not args.checkpoint_dir:
            parser.error("--resume needs --checkpoint_dir: the folder given as --save_model_dir to the run to continue")
        if args.resume_latest == args.resume_best:
            parser.error("--resume needs exactly one of --resume_latest (model_latest.pt) and --resume_best (model_best.pt)")
    if not args.debugging and not args.save_model_dir:
        if not args.resume:
            parser.error("--save_model_dir is required (where the run folder goes), or pass --debugging to save nothing")
        if args.resume_but_restart:
            parser.error("--resume_but_restart starts a new run: pass --save_model_dir for its folder "
                         "(the checkpoint's own folder is never overwritten)")
    for name in ("batch_size", "max_epochs", "val_every", "val_attack_cases"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup_epochs < 0:
        parser.error(f"--warmup_epochs must not be negative, got {args.warmup_epochs}")
    for name in ("optim_lr", "reg_weight", "momentum", "freq_reg_weight", "smooth_nr", "smooth_dr"):
        value = getattr(args, name)
        if not (value >= 0 and value != float("inf")):
            parser.error(f"--{name} must be a finite number >= 0, got {value}")
    if args.noamp and args.precision not in (None, "fp32"):
        parser.error(f"--noamp (full precision) contradicts --precision {args.precision}; pass one of them")
    args.amp = not args.noamp


def parse(description: str, argv: Sequence[str] | None, groups: Iterable[Callable], checks: Iterable[Callable]
          ) -> argparse.Namespace:
    """Build a parser from flag groups, parse ``argv`` and run the checks in order."""
    parser = make_parser(description)
    for add in groups:
        add(parser)
    _DEFAULTS.clear()
    _DEFAULTS.update(to_jsonable({a.dest: a.default for a in parser._actions if a.dest != "help"}))
    # flags whose unset value is resolved later: an older run folder lacking one ran with the fallback
    _DEFAULTS.update({k: v for k, v in MODEL_FLAG_FALLBACKS.items() if _DEFAULTS.get(k, 0) is None})
    args = parser.parse_args(argv)
    for check in checks:
        check(args, parser)
    return args


_DEFAULTS: dict = {}  # every flag's default, of the parser that parsed last (older run folders lack new flags)

EVAL_GROUPS = (add_model_args, add_data_args, add_pretrained_args, add_attack_args, add_eval_output_args, add_runtime_args)
TRAINING_GROUPS = (add_model_args, add_data_args, add_pretrained_args, add_attack_args, add_training_args, add_runtime_args)


def parse_eval_args(description: str, argv: Sequence[str] | None, check: Callable) -> argparse.Namespace:
    """Parser of the two evaluation scripts: same flags, a script-specific final check."""
    return parse(description, argv, EVAL_GROUPS, (check_model_args, check_eval_args, check_attack_args, check))


def parse_training_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parser of the training script."""
    return parse(description, argv, TRAINING_GROUPS, (check_model_args, check_attack_args, check_training_args))


# --------------------------------------------------------------------------- typed settings


def attack_settings(args: argparse.Namespace) -> AttackSettings:
    """The selected attack with its own option values (as typed), checked for finiteness."""
    cls = get_attack_class(args.attack_name)
    return AttackSettings(name=args.attack_name, values=option_values(cls.options, args),
                          target_class=args.target_class, batch_size=args.attack_batch_size)


def adv_subdir_name(args: argparse.Namespace) -> str:
    """The release's run-folder name of the selected attack (from the attack class)."""
    cls = get_attack_class(args.attack_name)
    return cls.folder_name(option_values(cls.options, args))


def model_settings(args: argparse.Namespace) -> ModelSettings:
    """The selected model with only the options it declares."""
    entry = get_model_entry(args.model_name)
    return ModelSettings(name=args.model_name, in_channels=args.in_channels, out_channels=args.out_channels,
                         roi=(args.roi_x, args.roi_y, args.roi_z), options=option_values(entry.options, args))


def data_settings(args: argparse.Namespace) -> DataSettings:
    return DataSettings(
        dataset=args.dataset, data_dir=args.data_dir, json_list=args.json_list,
        a_min=args.a_min, a_max=args.a_max, b_min=args.b_min, b_max=args.b_max,
        spacing=(args.space_x, args.space_y, args.space_z), roi=(args.roi_x, args.roi_y, args.roi_z),
        workers=args.workers, flip_prob=args.RandFlipd_prob, rotate90_prob=args.RandRotate90d_prob,
        scale_intensity_prob=args.RandScaleIntensityd_prob, shift_intensity_prob=args.RandShiftIntensityd_prob,
        use_normal_dataset=args.use_normal_dataset, crop_sampling=args.crop_sampling,
        nnunet_model_dir=getattr(args, "nnunet_model_dir", None),  # model flags: absent from a data-only namespace
        nnunet_fold=str(getattr(args, "nnunet_fold", ("0",))[0]),
    )


def window_settings(args: argparse.Namespace) -> WindowSettings:
    return WindowSettings(roi=(args.roi_x, args.roi_y, args.roi_z), sw_batch_size=args.sw_batch_size,
                          overlap=args.infer_overlap,
                          blend=getattr(args, "sw_blend", None) or "constant")  # an older args.json lacks it


def launch_settings(args: argparse.Namespace) -> LaunchSettings:
    return LaunchSettings(device=args.device, distributed=args.distributed, world_size=args.world_size,
                          rank=args.rank, dist_url=args.dist_url, dist_backend=args.dist_backend)


def _eval_job(args: argparse.Namespace, run_dir: str | None, title: str, adv_folder: str | None = None):
    from engine.evaluation import EvalJob

    return EvalJob(
        model=model_settings(args), data=data_settings(args), window=window_settings(args),
        attack=attack_settings(args), checkpoint=args.pretrained_path,
        split=split_for_mode(args.gen_train_adv_mode), max_cases=args.max_cases, run_dir=run_dir,
        adv_folder=adv_folder, save_dtype=args.save_dtype, save_figures=args.save_figures,
        overwrite=args.overwrite, seed=args.seed, verbose=args.verbose,
        title=title + (f" [{args.precision} model passes]" if args.precision not in (None, "fp32") else "")
        + (" [fused Dice-CE]" if args.fused_dice_ce and adv_folder is None else ""),
        launch=launch_settings(args), record=to_jsonable(vars(args)), runtime_keys=RUNTIME_FLAGS,
        path_keys=PATH_FLAGS, defaults=dict(_DEFAULTS), precision=args.precision or "fp32", compile=args.compile,
        finish_cases=args.finish_cases, fused_loss=args.fused_dice_ce, save_predictions=args.save_predictions,
    )


def generation_job(args: argparse.Namespace):
    """:class:`engine.evaluation.EvalJob` of ``generate_adv_samples.py``."""
    attack = attack_settings(args)
    run_dir = None
    if not args.debugging:
        sub = "" if args.no_sub_dir_adv_images else attack.folder_name()
        run_dir = os.path.normpath(os.path.join(args.save_adv_images_dir, sub))
    return _eval_job(args, run_dir, attack.summary())


def inference_job(args: argparse.Namespace):
    """:class:`engine.evaluation.EvalJob` of ``inference_on_saved_adv_samples.py``."""
    attack = attack_settings(args)
    sub = "" if args.no_sub_dir_adv_images else attack.folder_name()
    folder = os.path.normpath(os.path.join(args.adv_images_dir, sub))
    if not os.path.isdir(folder):
        hint = "" if args.no_sub_dir_adv_images else (" (the attack flags name the sub-folder; pass "
                                                     "--no_sub_dir_adv_images to use the folder itself)")
        raise UserError(f"adversarial images folder not found: {folder}{hint}")
    _check_same_volumes(args, folder)
    stem = os.path.splitext(os.path.basename(args.pretrained_path))[0] or args.model_name  # a model with its own weights
    run_dir = None if args.debugging else os.path.normpath(args.results_dir or os.path.join(folder, "inference", stem))
    return _eval_job(args, run_dir, f"saved {attack.summary()}", adv_folder=folder)


def _check_same_volumes(args: argparse.Namespace, folder: str) -> None:
    """Refuse to compare saved volumes with clean ones loaded under other data flags.

    Raises:
        UserError: the generation run's ``args.json`` records other values of :data:`VOLUME_FLAGS`.
    """
    from utils.io import read_json

    path = os.path.join(folder, "args.json")
    if not os.path.exists(path):
        return  # volumes from elsewhere: only their shapes can be checked, case by case
    try:
        generated = read_json(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is unreadable ({err}); it records how the saved volumes were made") from None
    now = to_jsonable(vars(args))
    differ = [k for k in VOLUME_FLAGS if k in generated and generated[k] != now.get(k)]
    if differ:
        shown = " ".join(f"--{k} {generated[k]}" for k in differ)
        raise UserError(f"the volumes in {folder} were made with other data flags ({', '.join(differ)}); the clean "
                        f"volumes would be built differently: pass the generation run's values ({shown})")


def training_job(args: argparse.Namespace):
    """:class:`engine.training.TrainingJob` of ``run_normal_or_adv_training.py``."""
    from engine.optim import OptimSettings
    from engine.training import TrainingJob

    attack = attack_settings(args)
    sub = attack.folder_name() if args.adv_training_mode and not args.no_sub_dir_model else ""
    checkpoint = None
    if args.resume:
        checkpoint = os.path.normpath(os.path.join(args.checkpoint_dir, sub,
                                                   "model_best.pt" if args.resume_best else "model_latest.pt"))
    continuing = args.resume and not args.resume_but_restart
    parent = args.checkpoint_dir if continuing else args.save_model_dir
    run_dir = None if args.debugging else os.path.normpath(os.path.join(parent, sub))
    resume_hint = f"--resume --resume_latest --checkpoint_dir {parent}" + (" --no_sub_dir_model" if args.no_sub_dir_model else "")
    mode = ("vaft" if args.freq_reg_mode else "adversarial") if args.adv_training_mode else "normal"
    return TrainingJob(
        model=model_settings(args), data=data_settings(args), window=window_settings(args), attack=attack,
        optim=OptimSettings(name=args.optim_name, lr=args.optim_lr, weight_decay=args.reg_weight,
                            momentum=args.momentum, schedule=args.lrschedule, warmup_epochs=args.warmup_epochs,
                            max_epochs=args.max_epochs),
        mode=mode, batch_size=args.batch_size, max_epochs=args.max_epochs, val_every=args.val_every,
        amp=not args.noamp, precision=args.precision, compile=args.compile, smooth_nr=args.smooth_nr, smooth_dr=args.smooth_dr,
        fused_loss=args.fused_dice_ce,
        freq_reg_norm=args.freq_reg_norm, freq_reg_weight=args.freq_reg_weight,
        val_attack=args.val_attack, val_attack_cases=args.val_attack_cases,
        save_checkpoint=args.save_checkpoint, run_dir=run_dir, resume_from=checkpoint,
        restart=args.resume_but_restart, pretrained=args.pretrained_path if args.use_pretrained else None,
        logdir=args.logdir, seed=args.seed, verbose=args.verbose, exp_name=args.exp_name,
        resume_hint=resume_hint, new_run_parent=None if continuing else args.save_model_dir,
        launch=launch_settings(args), record=to_jsonable(vars(args)),
    )


# --------------------------------------------------------------------------- running a script


def setup_logging(log_file: str | None = None, verbose: bool = False) -> None:
    """Log to stderr and, when given, append to ``log_file`` (the run folder's ``log.out``)."""
    from utils.distributed import rank_and_world

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_vafa", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    rank, world = rank_and_world()
    tag = f" [rank {rank}/{world}]" if world > 1 else ""  # several processes share one console
    fmt = logging.Formatter(f"%(asctime)s{tag} %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._vafa = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def run_cli(main_fn: Callable, job, prog: str) -> int:
    """Run a script body; every ordinary fault ends in one line on stderr.

    ``UserError`` (bad input): exit status 2. A stop signal (evaluation jobs): the finished
    work is kept, status 128 + signal. A file-system error (disk full, no permission): status 1.
    The process group, if the body joined one, is left in every case.
    """
    from utils import distributed as dist_utils

    try:
        main_fn(job)
    except UserError as err:
        sys.stderr.write(f"{prog}: error: {_one_line(err)}\n")
        return EXIT_USER_ERROR
    except dist_utils.StopRequested as stop:
        sys.stderr.write(f"{prog}: stopped by {stop}: every finished case is kept; run the same command again "
                         "to continue\n")
        return 128 + stop.signum
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        sys.stderr.write(f"{prog}: error: {err.strerror or err}{where} (nothing finished was lost; free space or fix "
                         "the permissions, then run the same command again)\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    finally:
        dist_utils.cleanup()
    return 0


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def run_script(job_from_args: Callable, main_fn: Callable, args: argparse.Namespace, prog: str) -> int:
    """Convert the parsed flags to the job (a ``UserError`` there is one line too) and run it."""
    try:
        job = job_from_args(args)
    except UserError as err:
        sys.stderr.write(f"{prog}: error: {_one_line(err)}\n")
        return EXIT_USER_ERROR
    return run_cli(main_fn, job, prog)
