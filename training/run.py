"""A training run: from the typed job to built objects, the run folder and the trainer's loop."""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from data.loading import CROPS_PER_VOLUME, DataSettings, build_dataset, build_loader, check_files
from data.sampling import EpochSampler, EpochSeededDataset
from utils.run_folder import run_lock
from training.losses import DeepSupervisionLoss, build_dice_ce
from training.optim import SCHEDULES, OptimSettings, build_optimizer, build_scheduler
from networks import ModelSettings, compiled, load_model_weights, with_precision
from training.trainer import BEST, LATEST, METRICS_FILE, TRAINERS, Trainer, TrainerConfig, TrainingResult
from utils import distributed as dist_utils
from utils.distributed import LaunchSettings
from utils.errors import UserError
from utils.io import remove_stale_temporaries, write_json
from utils.seeding import seed_everything

logger = logging.getLogger(__name__)

PROG = "run_normal_or_adv_training.py"


@dataclass(frozen=True)
class TrainingJob:
    """One run of the training script, typed.

    Args:
        model, data, optim: what to build and how.
        loop: the training loop's settings (epochs, validation, precision, window, attack, record ...).
        mode: ``"normal"``, ``"adversarial"`` or ``"vaft"`` (a key of :data:`trainer.TRAINERS`).
        batch_size: volumes per step and process (4 crops each).
        smooth_nr, smooth_dr: the Dice-CE's smoothing terms.
        fused_loss: Dice-CE as :class:`training.losses.FusedDiceCE` (``--fused_dice_ce``).
        run_dir: the run folder, or ``None`` to write nothing.
        resume_from: checkpoint to continue (or, with ``restart``, to take weights from).
        restart: start a new run at epoch 0 from ``resume_from``'s weights.
        pretrained: initial weights of a new run.
        new_run_parent: the folder a new run was asked to go in (for messages).
    """

    model: ModelSettings
    data: DataSettings
    optim: OptimSettings
    loop: TrainerConfig
    mode: str = "normal"
    batch_size: int = 1
    smooth_nr: float = 0.0
    smooth_dr: float = 1e-6
    fused_loss: bool = False
    run_dir: Optional[str] = None
    resume_from: Optional[str] = None
    restart: bool = False
    pretrained: Optional[str] = None
    verbose: bool = False
    exp_name: Optional[str] = None
    new_run_parent: Optional[str] = None
    launch: LaunchSettings = field(default_factory=LaunchSettings)

    @property
    def trainer_class(self) -> type:
        return TRAINERS[self.mode]

    @property
    def uses_attack(self) -> bool:
        return self.mode != "normal" or self.loop.val_attack


def build_trainer(job: TrainingJob, model: nn.Module, device: torch.device, **loaders) -> Trainer:
    """The trainer of ``job.mode`` with its loss, optimiser, schedule and attack built.

    Args:
        job: the training job.
        model: the bare network.
        device: where it trains.
        **loaders: ``train_loader``, ``val_loader``, ``val_indices``, ``run_dir`` of :class:`trainer.Trainer`.
    """
    # a deep-supervision list (UNETR++ --unetrpp_deep_supervision) is weighted over its resolutions;
    # a single output goes to Dice-CE unchanged
    loss_fn = DeepSupervisionLoss(build_dice_ce(job.smooth_nr, job.smooth_dr, fused=job.fused_loss))
    optimizer = build_optimizer(job.optim, model.parameters())
    # the attack runs on the bare network (no DDP hooks during its gradients), in --precision
    # (fp32 unless given: the release attacked in full precision)
    attack = None
    if job.uses_attack:
        attack = job.loop.attack.build(with_precision(compiled(model, job.loop.compile, device),
                                                      job.loop.precision or "fp32"), loss_fn)
    return job.trainer_class(job.loop, model, device, loss_fn=loss_fn, optimizer=optimizer,
                             scheduler=build_scheduler(job.optim, optimizer), attack=attack, **loaders)


def build_train_loader(job: TrainingJob, rank: int = 0, world: int = 1):
    """Training loader: ``batch_size`` volumes per step, each giving 4 crops (MONAI's collate
    flattens them: a batch holds ``4 * batch_size`` crops), ordered and augmented
    reproducibly per epoch (:class:`data.sampling.EpochSampler`). Every file is checked and
    read once first."""
    from monai.data import DataLoader

    items = job.data.items("training")
    for item in items:
        # image and label on one voxel grid, before resampling could hide a mismatch; every voxel read
        # once, so a truncated or non-finite training image is one line now, not a loader traceback later
        check_files(item, read_data=True)
    dataset = build_dataset(job.data, "training", "train", items=items)
    sampler = EpochSampler(len(dataset), seed=job.loop.seed, shuffle=True, rank=rank, world=world)
    workers = job.data.workers
    return DataLoader(EpochSeededDataset(dataset), batch_size=job.batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                      worker_init_fn=dist_utils.ignore_stop_signals)


def build_val_loader(job: TrainingJob, rank: int = 0, world: int = 1):
    """Validation loader over this rank's share of the cases (indices ``rank, rank + world, ...``).

    Every validation file is read whole before training starts, so a corrupt one is found
    now, not at the first validation (epoch 99 by default).

    Returns:
        ``(loader, indices)``: whole volumes one at a time, and their positions in the split.
    """
    items = job.data.items("validation")
    for item in items:
        check_files(item, read_data=True)
    indices = list(range(rank, len(items), world))
    return build_loader(job.data, "validation", "eval", sampler=indices, shuffle=False), indices


def check_folders(job: TrainingJob) -> None:
    """Refuse a resume without its checkpoint, a new run over another run's checkpoints, a
    missing initial-weights file — before anything is written."""
    if job.resume_from is not None and not os.path.isfile(job.resume_from):
        raise UserError(f"no checkpoint to resume at {job.resume_from}; --checkpoint_dir must be the --save_model_dir of "
                        "that run, with the same attack flags (they name its sub-folder) or --no_sub_dir_model")
    fresh = job.resume_from is None or job.restart
    if fresh and job.run_dir is not None:
        found = [name for name in (LATEST, BEST, METRICS_FILE) if os.path.exists(os.path.join(job.run_dir, name))]
        if found:
            raise UserError(f"{job.run_dir} already holds {' and '.join(found)} of another run; continue it with "
                            f"--resume --resume_latest --checkpoint_dir {os.path.normpath(job.new_run_parent)}, "
                            "or pick another --save_model_dir")
    if job.pretrained and job.resume_from is None and not os.path.isfile(job.pretrained):
        raise UserError(f"--pretrained_path {job.pretrained} is not a file; pass the full path of a checkpoint (.pt)")


def _log_header(job: TrainingJob, device: torch.device, world: int) -> None:
    logger.info("%s of %s on %s (%d process%s)%s", job.trainer_class.mode, job.model.name, device, world,
                "es" if world > 1 else "", f", experiment {job.exp_name}" if job.exp_name else "")
    if job.mode != "normal":
        logger.info("attack: %s", job.loop.attack.summary())
    if job.mode == "vaft":
        logger.info("frequency-consistency loss: norm %s, weight %g", job.loop.freq_reg_norm, job.loop.freq_reg_weight)
    logger.info("effective batch: %d volume(s) x %d crops x %d process(es) = %d crops per step",
                job.batch_size, CROPS_PER_VOLUME, world, job.batch_size * CROPS_PER_VOLUME * world)
    if job.optim.schedule not in SCHEDULES:
        logger.info("--lrschedule %s: constant learning rate %g", job.optim.schedule, job.optim.lr)
    logger.info("run folder: %s", job.run_dir or "none (--debugging)")


def _train_process(job: TrainingJob, device: torch.device) -> TrainingResult:
    """One process of a run (the only one, or one rank); the run folder is locked for the run
    (rank 0), so a second training into it is refused instead of replacing its files."""
    rank, world = dist_utils.rank_and_world()
    check_folders(job)
    seed_everything(job.loop.seed)
    model = job.model.build()
    if job.pretrained and job.resume_from is None:  # before any folder is made: a wrong checkpoint leaves none
        load_model_weights(model, job.pretrained, given=job.model.flags())
    with run_lock(job.run_dir, hint="wait for it to finish or choose another --save_model_dir"):
        check_folders(job)  # again, holding the lock: a run that started meanwhile has written its files
        return _train_locked(job, device, model, rank, world)


def _train_locked(job: TrainingJob, device: torch.device, model: nn.Module, rank: int, world: int) -> TrainingResult:
    """The run, once its folder is locked: logging, ``args.json``, loaders, trainer, loop."""
    from utils.logs import setup_logging

    main = rank == 0
    run_dir = job.run_dir
    setup_logging(os.path.join(run_dir, "log.out") if run_dir and main else None, job.verbose)
    if not main:
        logging.getLogger().setLevel(logging.WARNING)
    if run_dir is not None and main:
        os.makedirs(run_dir, exist_ok=True)
        remove_stale_temporaries(run_dir)  # a checkpoint write killed mid-way
        continuing = job.resume_from is not None and not job.restart
        if not continuing or not os.path.exists(os.path.join(run_dir, "args.json")):
            write_json(os.path.join(run_dir, "args.json"), dict(job.loop.record))
        logger.info("host %s, pid %d; arguments in %s", platform.node(), os.getpid(), os.path.join(run_dir, "args.json"))
    dist_utils.barrier()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _log_header(job, device, world)
    if job.pretrained and job.resume_from is None:
        logger.info("initial weights from %s", job.pretrained)
    elif job.pretrained:
        logger.info("--pretrained_path ignored: the weights come from %s", job.resume_from)
    logger.info("%s parameters", f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
    train_loader = build_train_loader(job, rank, world)
    val_loader, val_indices = build_val_loader(job, rank, world)
    trainer = build_trainer(job, model, device, train_loader=train_loader, val_loader=val_loader,
                            val_indices=val_indices, run_dir=run_dir)
    if job.resume_from is not None:
        trainer.restore(job.resume_from, restart=job.restart, given=job.model.flags())
    return trainer.fit()


def run_training(job: TrainingJob) -> TrainingResult:
    """Run the training the job describes (the training script's only call).

    One process, or one rank of a ``torchrun``/``srun`` launch. ``--distributed``
    without a launcher spawns one process per visible GPU (the release's launch);
    SIGTERM/SIGUSR1 reach the ranks.

    Returns:
        The :class:`trainer.TrainingResult` (rank 0's view; a default one after a spawned launch).

    Raises:
        UserError: bad input (missing files, a checkpoint of another architecture, a run
            folder that already holds checkpoints, ``--distributed`` without GPUs ...).
    """
    if dist_utils.needs_spawn(job.launch):
        dist_utils.spawn_gpus(job.launch, PROG)  # no GPU: one clear error before anything else
        check_folders(job)
    try:
        result = dist_utils.launch(_train_process, job, job.launch, PROG)
    except OSError as err:  # a full disk, a folder made read-only: say how to go on from what is on disk
        err.fix = continue_hint(job)  # type: ignore[attr-defined]
        raise
    return result if result is not None else TrainingResult(run_dir=job.run_dir)


def continue_hint(job: TrainingJob) -> str:
    """How to go on after a file-system fault stopped the run, from what its folder holds:
    resume from ``model_latest.pt``, else from ``model_best.pt``, else start afresh."""
    run_dir = job.run_dir
    if run_dir is None or (job.resume_from is not None and not job.restart):  # a resume resumes again
        return "run the same command again"
    if os.path.exists(os.path.join(run_dir, LATEST)):
        return f"run the same command plus {job.loop.resume_hint}"
    if os.path.exists(os.path.join(run_dir, BEST)):
        return f"run the same command plus {job.loop.resume_hint.replace('--resume_latest', '--resume_best')}"
    if os.path.exists(os.path.join(run_dir, METRICS_FILE)):
        return (f"no checkpoint was saved to continue from: run the same command with another --save_model_dir "
                f"(or remove {os.path.join(run_dir, METRICS_FILE)} to start afresh there)")
    return "run the same command again"
