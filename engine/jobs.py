"""The typed jobs of the three entry scripts (what :mod:`engine.evaluation` and :mod:`training.run` run),
their run folders' names, and running a script body with one-line errors and the exit statuses."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from data.loading import split_for_mode
from utils.errors import EXIT_USER_ERROR, UserError
from utils.io import to_jsonable
from utils.run_folder import RunLayout

from .cli import (EVAL_GROUPS, INFERENCE_GROUPS, attack_settings, data_settings, flag_defaults, launch_settings,
                  model_settings, window_settings)
from .flags import DEFAULT_MODEL, PATH_FLAGS, RUNTIME_FLAGS, VOLUME_FLAGS

def run_folder_names(args: argparse.Namespace) -> list[str]:
    """The run-folder name of the selected attack, then the other spellings older runs used.

    The attack's name (:meth:`attacks.AttackSettings.folder_name`, the release's names with
    one spelling per value), plus ``_<model>`` for a model other than the release's
    ``unet-r`` and ``_<precision>`` for model passes other than fp32: every setting that
    changes the numbers and that a user varies within one parent folder.
    """
    model, precision = getattr(args, "model_name", DEFAULT_MODEL), getattr(args, "precision", None)
    suffix = ("" if model == DEFAULT_MODEL else f"_{model}") + ("" if precision in (None, "fp32") else f"_{precision}")
    return [name + suffix for name in attack_settings(args).folder_names()]


def adv_subdir_name(args: argparse.Namespace) -> str:
    """The run-folder name of the selected attack and model (:func:`run_folder_names`' first)."""
    return run_folder_names(args)[0]


def existing_or_new(parent: str, names: Sequence[str]) -> str:
    """``parent/<name>`` of the first name that exists there (an older run's spelling is
    found), else ``parent/<names[0]>``."""
    for name in names:
        path = os.path.normpath(os.path.join(parent, name))
        if os.path.isdir(path):
            return path
    return os.path.normpath(os.path.join(parent, names[0]))


def _eval_job(args: argparse.Namespace, run_dir: str | None, title: str, adv_folder: str | None = None):
    from engine.evaluation import EvalJob

    return EvalJob(
        model=model_settings(args), data=data_settings(args), window=window_settings(args),
        attack=attack_settings(args), checkpoint=args.pretrained_path,
        split=split_for_mode(args.gen_train_adv_mode), max_cases=args.max_cases, run_dir=run_dir,
        adv_folder=adv_folder, save_dtype=args.save_dtype, save_figures=args.save_figures,
        overwrite=args.overwrite, seed=args.seed, verbose=args.verbose,
        title=title + (" [--debugging: nothing saved]" if args.debugging else "")
        + (f" [{args.precision} model passes]" if args.precision not in (None, "fp32") else "")
        + (" [fused Dice-CE]" if args.fused_dice_ce and adv_folder is None else ""),
        launch=launch_settings(args), record=to_jsonable(vars(args)), runtime_keys=RUNTIME_FLAGS,
        path_keys=PATH_FLAGS, defaults={**flag_defaults(EVAL_GROUPS), **flag_defaults(INFERENCE_GROUPS)},
        precision=args.precision or "fp32", compile=args.compile,
        finish_cases=args.finish_cases, fused_loss=args.fused_dice_ce,
        save_predictions=args.save_predictions, skip_empty=getattr(args, "skip_empty_cases", False),
    )


def generation_job(args: argparse.Namespace):
    """:class:`engine.evaluation.EvalJob` of ``generate_adv_samples.py``."""
    attack = attack_settings(args)
    run_dir = None
    if args.debugging and args.save_adv_images_dir:
        sys.stderr.write(f"WARNING: --debugging saves nothing: no adversarial volume or report goes to "
                         f"--save_adv_images_dir {args.save_adv_images_dir} (drop --debugging to save them)\n")
    if not args.debugging:
        names = [""] if args.no_sub_dir_adv_images else run_folder_names(args)
        run_dir = existing_or_new(args.save_adv_images_dir, names)
    return _eval_job(args, run_dir, attack.summary())


def inference_job(args: argparse.Namespace):
    """:class:`engine.evaluation.EvalJob` of ``inference_on_saved_adv_samples.py``."""
    attack = attack_settings(args)
    if args.adv_run_dir:
        folder = os.path.normpath(args.adv_run_dir)
    else:
        # the volumes may come from another model (or precision) than the one evaluated: its own
        # name first, then the attack's name alone (the release's model, fp32)
        names = [""] if args.no_sub_dir_adv_images else list(dict.fromkeys(run_folder_names(args)
                                                                            + attack.folder_names()))
        folder = existing_or_new(args.adv_images_dir, names)
    if not os.path.isdir(folder):
        hint = "" if args.no_sub_dir_adv_images or args.adv_run_dir else (
            " (the attack flags name the sub-folder; pass --adv_run_dir with the run folder itself, or "
            "--no_sub_dir_adv_images to use the given folder itself)")
        raise UserError(f"adversarial images folder not found: {folder}{hint}")
    _check_same_volumes(args, folder)
    run_dir = None if args.debugging else inference_results_dir(args.results_dir, folder,
                                                                args.pretrained_path or args.model_name)
    return _eval_job(args, run_dir, f"saved {attack.summary()}", adv_folder=folder)


def inference_results_dir(results_dir: str | None, adv_folder: str, checkpoint: str) -> str:
    """Where an inference run's results go: ``results_dir`` when given, else
    ``<adv_folder>/inference/<checkpoint's folder>_<checkpoint name>`` (``run/model_best.pt`` ->
    ``run_model_best``), so that two checkpoints with one file name do not share a folder.

    A folder whose ``args.json`` records this checkpoint is reused (also the older name, the
    checkpoint's name alone); should the name hold another checkpoint's results, a short
    digest of this checkpoint's path is added.
    """
    import hashlib

    from utils.io import read_json

    if results_dir:
        return os.path.normpath(results_dir)
    if not os.path.isfile(os.path.expanduser(checkpoint)):  # a model whose own folder holds its weights: its name
        return os.path.normpath(os.path.join(adv_folder, "inference", checkpoint))
    path = os.path.realpath(os.path.expanduser(checkpoint))
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"{os.path.basename(os.path.dirname(path))}_{stem}"
    digest = hashlib.sha1(path.encode()).hexdigest()[:8]
    parent = os.path.join(adv_folder, "inference")

    def recorded(folder: str):
        try:
            found = read_json(RunLayout(folder).args).get("pretrained_path")
        except (OSError, ValueError):
            return None
        return os.path.realpath(os.path.expanduser(found)) if isinstance(found, str) and found else None

    candidates = [os.path.join(parent, n) for n in (name, stem, f"{name}_{digest}")]
    for folder in candidates:
        if recorded(folder) == path:
            return os.path.normpath(folder)
    first = candidates[0]
    return os.path.normpath(first if recorded(first) is None else candidates[2])


def _check_same_volumes(args: argparse.Namespace, folder: str) -> None:
    """Refuse to compare saved volumes with clean ones loaded under other data flags.

    Raises:
        UserError: the generation run's ``args.json`` records other values of :data:`VOLUME_FLAGS`.
    """
    from utils.io import read_json

    path = RunLayout(folder).args
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
    """:class:`training.run.TrainingJob` of ``run_normal_or_adv_training.py``."""
    from training.optim import OptimSettings
    from training.config import TrainerConfig
    from training.run import TrainingJob

    attack = attack_settings(args)
    names = run_folder_names(args) if args.adv_training_mode and not args.no_sub_dir_model else [""]
    checkpoint = None
    if args.resume:
        checkpoint = os.path.join(existing_or_new(args.checkpoint_dir, names),
                                  "model_best.pt" if args.resume_best else "model_latest.pt")
    continuing = args.resume and not args.resume_but_restart
    parent = args.checkpoint_dir if continuing else args.save_model_dir
    run_dir = None if args.debugging else existing_or_new(parent, names)
    resume_hint = f"--resume --resume_latest --checkpoint_dir {parent}" + (" --no_sub_dir_model" if args.no_sub_dir_model else "")
    mode = ("vaft" if args.freq_reg_mode else "adversarial") if args.adv_training_mode else "normal"
    model = model_settings(args)
    optim = OptimSettings(name=args.optim_name, lr=args.optim_lr, weight_decay=args.reg_weight, momentum=args.momentum,
                          schedule=args.lrschedule, warmup_epochs=args.warmup_epochs, max_epochs=args.max_epochs)
    loop = TrainerConfig(
        max_epochs=args.max_epochs, val_every=args.val_every, num_classes=model.out_channels,
        window=window_settings(args), attack=attack, val_attack=args.val_attack,
        val_attack_cases=args.val_attack_cases, seed=args.seed, amp=not args.noamp, precision=args.precision,
        compile=args.compile, save_checkpoint=args.save_checkpoint, logdir=args.logdir,
        freq_reg_norm=args.freq_reg_norm, freq_reg_weight=args.freq_reg_weight, optim_name=optim.name,
        resume_hint=resume_hint, record=to_jsonable(vars(args)))
    return TrainingJob(
        model=model, data=data_settings(args), optim=optim, loop=loop, mode=mode, batch_size=args.batch_size,
        smooth_nr=args.smooth_nr, smooth_dr=args.smooth_dr, fused_loss=args.fused_dice_ce, run_dir=run_dir,
        resume_from=checkpoint, restart=args.resume_but_restart,
        pretrained=args.pretrained_path if args.use_pretrained else None, verbose=args.verbose,
        exp_name=args.exp_name, new_run_parent=None if continuing else args.save_model_dir,
        launch=launch_settings(args),
    )


# --------------------------------------------------------------------------- running a script


def run_cli(main_fn: Callable, job, prog: str, unit: str = "case") -> int:
    """Run a script body; every ordinary fault ends in one line on stderr.

    ``UserError`` (bad input): exit status 2. A stop signal (evaluation jobs, drivers): the
    finished work (every finished ``unit``) is kept, status 128 + signal. A file-system error
    (disk full, no permission): status 1. Ctrl-C: status 130. The process group, if the body
    joined one, is left in every case.
    """
    from utils import distributed as dist_utils

    try:
        main_fn(job)
    except UserError as err:
        sys.stderr.write(f"{prog}: error: {_one_line(err)}\n")
        return EXIT_USER_ERROR
    except dist_utils.StopRequested as stop:
        sys.stderr.write(f"{prog}: stopped by {stop}: every finished {unit} is kept; run the same command again "
                         "to continue\n")
        return 128 + stop.signum
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        then = getattr(err, "fix", "run the same command again")  # a job may know better (training: which resume)
        sys.stderr.write(f"{prog}: error: {err.strerror or err}{where} (nothing finished was lost; free space or fix "
                         f"the permissions, then {then})\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    finally:
        dist_utils.cleanup()
    return 0


def run_driver(main_fn: Callable, job, prog: str, unit: str = "cell") -> int:
    """Run a driver's body (sweep, transfer matrix, band analysis, demo: scripts that run
    many units of work) as :func:`run_cli` does, with SIGTERM/SIGUSR1 recorded for the whole
    body (:func:`utils.distributed.stop_on_signals`).

    The body calls :func:`utils.distributed.check_stop` before each unit and before its
    final output; a unit that is an evaluation job stops at its own safe points. Either way
    the driver ends with one line and status 128 + signal, starting nothing new, and a rerun
    of the same command continues (finished units are reused). Ctrl-C ends it with 130.
    """
    from utils import distributed as dist_utils

    with dist_utils.stop_on_signals():
        return run_cli(main_fn, job, prog, unit)


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
