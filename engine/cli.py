"""Command-line flags shared by the three entry scripts.

Flag names, spellings and defaults follow the paper's release (DESIGN §2), so its
commands run unchanged; abbreviations stay allowed (``--out_channel`` is a prefix of
``--out_channels`` in the release's own README). Each script composes the groups it
needs; the checks of conflicting flags live in :func:`check_args`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Iterable, Sequence

import torch

from utils.errors import UserError

logger = logging.getLogger(__name__)

ATTACK_NAMES = ("vafa-3d", "vafa-2d", "pgd", "fgsm", "bim", "gn")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line (no usage dump), exit status 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(description: str) -> ArgumentParser:
    return ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


# --------------------------------------------------------------------------- groups


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model_name", default="unet-r", type=str, help="network architecture")
    g.add_argument("--in_channels", default=1, type=int, help="input channels")
    g.add_argument("--out_channels", default=14, type=int, help="output classes, background included")
    g.add_argument("--feature_size", default=16, type=int, help="UNETR feature size")
    g.add_argument("--hidden_size", default=768, type=int, help="ViT hidden size")
    g.add_argument("--mlp_dim", default=3072, type=int, help="ViT MLP size")
    g.add_argument("--num_heads", default=12, type=int, help="ViT attention heads")
    g.add_argument("--pos_embed", default="perceptron", type=str, help="patch embedding (MONAI proj_type)")
    g.add_argument("--norm_name", default="instance", type=str, help="decoder normalisation")
    g.add_argument("--dropout_rate", default=0.0, type=float, help="dropout rate")
    g.add_argument("--res_block", action="store_true", help="accepted for compatibility; UNETR always uses residual blocks")
    g.add_argument("--conv_block", action="store_true", help="accepted for compatibility; UNETR always uses conv blocks")
    g.add_argument("--roi_x", default=96, type=int, help="ROI size along x (H)")
    g.add_argument("--roi_y", default=96, type=int, help="ROI size along y (W)")
    g.add_argument("--roi_z", default=96, type=int, help="ROI size along z (D)")
    g.add_argument("--infer_overlap", default=0.5, type=float, help="sliding-window inference overlap")
    g.add_argument("--sw_batch_size", default=1, type=int, help="windows per batch in sliding-window inference")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="btcv", choices=("btcv", "acdc"), help="btcv = Synapse multi-organ CT")
    g.add_argument("--data_dir", default=None, type=str, help="dataset folder (imagesTr/, labelsTr/, JSON list)")
    g.add_argument("--json_list", default="dataset_synapse_18_12.json", type=str, help="Decathlon-style JSON split, relative to --data_dir or absolute")
    g.add_argument("--a_min", default=-175.0, type=float, help="intensity window lower bound (HU)")
    g.add_argument("--a_max", default=250.0, type=float, help="intensity window upper bound (HU)")
    g.add_argument("--b_min", default=0.0, type=float, help="scaled lower bound")
    g.add_argument("--b_max", default=1.0, type=float, help="scaled upper bound")
    g.add_argument("--space_x", default=1.5, type=float, help="resampled spacing along x (mm)")
    g.add_argument("--space_y", default=1.5, type=float, help="resampled spacing along y (mm)")
    g.add_argument("--space_z", default=2.0, type=float, help="resampled spacing along z (mm)")
    g.add_argument("--workers", default=8, type=int, help="data-loading worker processes")
    g.add_argument("--RandFlipd_prob", default=0.2, type=float, help="random flip probability")
    g.add_argument("--RandRotate90d_prob", default=0.2, type=float, help="random 90-degree rotation probability")
    g.add_argument("--RandScaleIntensityd_prob", default=0.1, type=float, help="random intensity scale probability")
    g.add_argument("--RandShiftIntensityd_prob", default=0.1, type=float, help="random intensity shift probability")
    g.add_argument("--use_normal_dataset", action="store_true", help="plain monai Dataset instead of CacheDataset")


def add_pretrained_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("weights")
    g.add_argument("--use_pretrained", action="store_true", help="initialise the model from --pretrained_path")
    g.add_argument("--pretrained_path", default="", type=str, help="full path of a checkpoint (.pt)")


def add_attack_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("attack")
    g.add_argument("--attack_name", default="vafa-3d", choices=ATTACK_NAMES, help="attack")
    g.add_argument("--steps", default=20, type=int, help="attack iterations (honoured for VAFA too, unlike the release)")
    g.add_argument("--alpha", default=0.01, type=float, help="PGD/BIM step size on the [0,1] scale")
    g.add_argument("--eps", default=4, type=float, help="L-inf budget on the [0,255] scale")
    g.add_argument("--std", default=4, type=float, help="Gaussian-noise std on the [0,255] scale")
    g.add_argument("--targeted", action="store_true", help="targeted attack towards --target_class")
    g.add_argument("--target_class", default=0, type=int, help="class every voxel is pushed to under --targeted (0 = background)")
    g.add_argument("--q_max", default=20, type=float, help="VAFA: upper bound of the quantisation tables")
    g.add_argument("--q_min", default=5, type=float, help="VAFA: lower bound of the quantisation tables (release: 5)")
    g.add_argument("--q_init", default="max", choices=("max", "one"), help="VAFA: start tables at q_max (release) or 1 (paper's Algorithm 1: pair with --q_min 1, the start is clipped to [q_min, q_max])")
    g.add_argument("--use_ssim_loss", action="store_true", help="VAFA-3D: add the block-wise SSIM term")
    g.add_argument("--block_size", default=[8, 8, 8], type=int, nargs="+", help="VAFA DCT block: 3 sides (vafa-3d) or 2 (vafa-2d)")
    g.add_argument("--attack_batch_size", default=6, type=int, help="ROI tiles attacked together (release: 6)")


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
    g.add_argument("--max_cases", default=None, type=int, help="evaluate only the first N cases")


# --------------------------------------------------------------------------- checks and helpers


def check_attack_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Conflicts among attack flags; converts ``block_size`` to a tuple."""
    args.block_size = tuple(args.block_size)
    if args.attack_name == "vafa-3d" and len(args.block_size) != 3:
        parser.error(f"--attack_name vafa-3d needs three --block_size sides, got {list(args.block_size)}")
    if args.attack_name == "vafa-2d" and len(args.block_size) != 2:
        parser.error(f"--attack_name vafa-2d needs two --block_size sides, got {list(args.block_size)}")
    if args.attack_name.startswith("vafa"):
        roi = (args.roi_x, args.roi_y, args.roi_z)[: len(args.block_size)]
        if any(b <= 0 for b in args.block_size):
            parser.error(f"--block_size must be positive, got {list(args.block_size)}")
        if any(r % b for r, b in zip(roi, args.block_size)):
            parser.error(f"ROI {roi} is not divisible by --block_size {tuple(args.block_size)}; choose a block that divides --roi_x/--roi_y/--roi_z")
        if args.q_min > args.q_max:
            parser.error(f"--q_min ({args.q_min}) must not exceed --q_max ({args.q_max})")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.eps < 0 or args.std < 0 or args.alpha < 0:
        parser.error(f"--eps, --std and --alpha must be non-negative, got {args.eps}, {args.std}, {args.alpha}")
    if args.attack_batch_size < 1:
        parser.error(f"--attack_batch_size must be at least 1, got {args.attack_batch_size}")
    if args.targeted and not 0 <= args.target_class < args.out_channels:
        parser.error(f"--target_class must be in [0, {args.out_channels - 1}], got {args.target_class}")


def check_data_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not args.data_dir:
        parser.error("--data_dir is required: the dataset folder holding imagesTr/, labelsTr/ and the JSON list")
    if not 0 <= args.infer_overlap < 1:
        parser.error(f"--infer_overlap must be in [0, 1), got {args.infer_overlap}")


def check_pretrained_args(args: argparse.Namespace, parser: argparse.ArgumentParser, required: bool) -> None:
    if args.pretrained_path:
        args.use_pretrained = True
    elif args.use_pretrained or required:
        parser.error("--pretrained_path is required: the full path of the model checkpoint (.pt)")


def resolve_device(name: str | None) -> torch.device:
    """``--device`` to a ``torch.device``; CUDA when available and none is named."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r} is not a torch device ({err}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return device


def attack_config(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``attacks.build_attack`` for ``--attack_name`` (ε and σ moved to [0,1])."""
    name = args.attack_name
    if name in ("vafa-3d", "vafa-2d"):
        return dict(
            q_max=args.q_max,
            q_min=args.q_min,
            q_init=args.q_init,
            steps=args.steps,
            block_size=tuple(args.block_size),
            use_ssim_loss=args.use_ssim_loss,
            targeted=args.targeted,
        )
    if name in ("pgd", "bim"):
        return dict(eps=args.eps / 255.0, alpha=args.alpha, steps=args.steps, targeted=args.targeted)
    if name == "fgsm":
        return dict(eps=args.eps / 255.0, targeted=args.targeted)
    if name == "gn":
        return dict(std=args.std / 255.0)
    raise UserError(f"unknown --attack_name {name!r}; valid names: {', '.join(ATTACK_NAMES)}")


def build_attack_from_args(args: argparse.Namespace, model: torch.nn.Module, loss_fn):
    from attacks import build_attack

    return build_attack(args.attack_name, model, loss_fn, **attack_config(args))


def adv_subdir_name(args: argparse.Namespace) -> str:
    """The release's run-folder name for an attack (DESIGN §2); numbers print as parsed."""
    name, bs = args.attack_name, tuple(args.block_size)
    if name == "pgd":
        return f"pgd_alpha_{args.alpha}_eps_{args.eps}_i_{args.steps}"
    if name == "fgsm":
        return f"fgsm_eps_{args.eps}"
    if name == "bim":
        return f"bim_alpha_{args.alpha}_eps_{args.eps}_i_{args.steps}"
    if name == "gn":
        return f"gn_std_{args.std}"
    if name == "vafa-2d":
        return f"vafa_q_max_{args.q_max}_i_{args.steps}_2d_dct_{bs[0]}x{bs[1]}"
    if name == "vafa-3d":
        return f"vafa_q_max_{args.q_max}_i_{args.steps}_3d_dct_{bs[0]}x{bs[1]}x{bs[2]}_use_ssim_loss_{args.use_ssim_loss}"
    raise UserError(f"unknown --attack_name {name!r}; valid names: {', '.join(ATTACK_NAMES)}")


def attack_summary(args: argparse.Namespace) -> str:
    """One line describing the attack, for logs and tables."""
    name = args.attack_name
    if name in ("pgd", "bim"):
        return f"{name.upper()}: alpha={args.alpha}, eps={args.eps}/255, steps={args.steps}, targeted={args.targeted}"
    if name == "fgsm":
        return f"FGSM: eps={args.eps}/255, targeted={args.targeted}"
    if name == "gn":
        return f"GN: std={args.std}/255"
    ssim = f", use_ssim_loss={args.use_ssim_loss}" if name == "vafa-3d" else ""
    return (
        f"{name.upper()}: q_max={args.q_max}, q_min={args.q_min}, steps={args.steps}, "
        f"block_size={tuple(args.block_size)}{ssim}, targeted={args.targeted}"
    )


def setup_logging(log_file: str | None = None, verbose: bool = False) -> None:
    """Log to stderr and, when given, append to ``log_file`` (the run folder's ``log.out``)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_vafa", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    from utils.distributed import rank_and_world

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


def run_cli(main_fn, args: argparse.Namespace, prog: str) -> int:
    """Run a script body, turning ``UserError`` into one line on stderr and exit status 2.

    The process group, if the body joined one, is left in every case (``destroy_process_group``).
    """
    from utils import distributed as dist_utils
    from utils.errors import EXIT_USER_ERROR

    try:
        main_fn(args)
    except UserError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    finally:
        dist_utils.cleanup()
    return 0


def parse_with(parser: argparse.ArgumentParser, argv: Sequence[str] | None, checks: Iterable) -> argparse.Namespace:
    args = parser.parse_args(argv)
    for check in checks:
        check(args, parser)
    return args


def parse_eval_args(description: str, argv: Sequence[str] | None, check) -> argparse.Namespace:
    """Parser of the two evaluation scripts: same flags, a script-specific final check."""
    parser = make_parser(description)
    for add in (add_model_args, add_data_args, add_pretrained_args, add_attack_args, add_eval_output_args, add_runtime_args):
        add(parser)

    def common(args, parser):
        check_pretrained_args(args, parser, required=True)
        check_attack_args(args, parser)
        if args.gen_val_adv_mode and args.gen_train_adv_mode:
            parser.error("--gen_val_adv_mode and --gen_train_adv_mode exclude each other; pick one split")

    return parse_with(parser, argv, (check_data_args, common, check))


# --------------------------------------------------------------------------- training (run_normal_or_adv_training.py)

LR_SCHEDULES = ("warmup_cosine", "cosine_anneal")
"""``--lrschedule`` values with a schedule; any other value trains at a constant rate (release)."""


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


def check_training_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Conflicts among the training flags (one-line ``parser.error``, exit status 2)."""
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
    for name in ("batch_size", "max_epochs", "val_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup_epochs < 0:
        parser.error(f"--warmup_epochs must not be negative, got {args.warmup_epochs}")
    if args.optim_lr < 0 or args.reg_weight < 0:
        parser.error(f"--optim_lr and --reg_weight must not be negative, got {args.optim_lr}, {args.reg_weight}")
    if args.freq_reg_weight < 0:
        parser.error(f"--freq_reg_weight must not be negative, got {args.freq_reg_weight}")
    if args.val_attack_cases < 1:
        parser.error(f"--val_attack_cases must be at least 1, got {args.val_attack_cases}")
    args.amp = not args.noamp


def parse_training_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parser of the training script: model, data, weights, attack, training and runtime flags."""
    parser = make_parser(description)
    for add in (add_model_args, add_data_args, add_pretrained_args, add_attack_args, add_training_args, add_runtime_args):
        add(parser)

    def weights(args, parser):
        check_pretrained_args(args, parser, required=False)

    return parse_with(parser, argv, (check_data_args, weights, check_attack_args, check_training_args))
