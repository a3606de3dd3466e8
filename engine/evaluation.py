"""Whole-volume attack and evaluation, shared by the generation and inference scripts.

A case flows through one path whichever script runs it: load (eval transforms), get
an adversarial volume (attack it tile by tile, or read it from disk), predict both
volumes with sliding-window inference, compute the metrics, save what was asked, and
record the case as finished so that a rerun skips it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from attacks import AttackSettings
from data.loading import DataSettings, EmptyCase, build_dataset, check_case, check_files, class_names, plain_tensor
from training.losses import build_dice_ce
from engine.reports import DEFINITIONS, case_rows, format_summary, report_case, summarise
from utils.run_folder import RunLayout, prepare_run_dir, run_lock
from networks import ModelSettings, WindowSettings, compiled, load_model_weights, predict_volume, with_precision
from utils import distributed as dist_utils
from utils.distributed import LaunchSettings
from utils.errors import UserError
from utils.io import array_to_volume, load_nifti, read_json, save_nifti, volume_to_array, write_csv, write_json
from utils.progress import progress
from utils.seeding import seed_everything

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalJob:
    """One run of an evaluation script, typed.

    Args:
        model, data, window, attack: what to build, where the data is, sliding-window
            inference, and the attack (generation) or the attack that named the saved
            volumes (inference).
        checkpoint: weights of the evaluated model.
        split: ``"validation"`` or ``"training"``.
        max_cases: evaluate only the first N cases of the split.
        run_dir: where results go, or ``None`` to write nothing.
        adv_folder: inference: the folder holding the saved adversarial volumes.
        save_dtype: saved volumes, ``"uint8"`` (release) or ``"float32"``.
        save_figures: one PNG per case.
        overwrite: start ``run_dir`` afresh.
        seed: random seed (each case is seeded with ``seed + case index``).
        verbose: debug logging.
        title: the run's one-line description (the printed summary's heading).
        launch: how processes start.
        record: the resolved arguments, written to ``args.json`` and ``results.json``.
        runtime_keys: keys of ``record`` that do not change the numbers (a resume may differ there).
        path_keys: keys of ``record`` that hold paths (compared canonically on a resume).
        defaults: every flag's default (a key an older ``args.json`` lacks counts as its default).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the model's passes (attack and prediction).
        compile: ``torch.compile`` the model.
        finish_cases: ``"background"`` finishes each case (metrics, saved files, its record) in
            a background thread while the next case is attacked, ``"inline"`` before the next
            one starts, ``"auto"`` in the background when the model runs on an accelerator
            (the CPU is free meanwhile) and inline on a CPU (where a second thread slows the
            attack down more than it saves). The numbers are the same either way.
        fused_loss: the attack's Dice-CE is :class:`training.losses.FusedDiceCE` (``--fused_dice_ce``).
        save_predictions: write each case's clean and adversarial label maps on the grid of its file
            (``pred{Tr,Ts}Clean/``, ``pred{Tr,Ts}Adv/``).
        skip_empty: a case with nothing to segment is recorded as skipped (``--skip_empty_cases``)
            instead of stopping the run.
    """

    model: ModelSettings
    data: DataSettings
    window: WindowSettings
    attack: AttackSettings
    checkpoint: str
    split: str = "validation"
    max_cases: Optional[int] = None
    run_dir: Optional[str] = None
    adv_folder: Optional[str] = None
    save_dtype: str = "uint8"
    save_figures: bool = False
    overwrite: bool = False
    seed: int = 0
    verbose: bool = False
    title: str = ""
    launch: LaunchSettings = field(default_factory=LaunchSettings)
    record: Mapping = field(default_factory=dict)
    runtime_keys: frozenset = frozenset()
    path_keys: frozenset = frozenset()
    defaults: Mapping = field(default_factory=dict)
    precision: str = "fp32"
    compile: bool = False
    finish_cases: str = "auto"
    fused_loss: bool = False
    save_predictions: bool = False
    skip_empty: bool = False

    @property
    def inputs(self) -> dict:
        """The files whose content the numbers depend on beyond the flags: ``{"checkpoint": path}``."""
        return {"checkpoint": self.checkpoint}

    @property
    def layout(self) -> Optional[RunLayout]:
        """Where this run's files go (``None`` with ``run_dir=None``: nothing is written)."""
        return None if self.run_dir is None else RunLayout(self.run_dir, self.split)

    @property
    def adv_layout(self) -> Optional[RunLayout]:
        """The generation run whose saved adversarial volumes inference reads."""
        return None if self.adv_folder is None else RunLayout(self.adv_folder, self.split)

    def items(self) -> list[dict]:
        items = self.data.items(self.split)
        return items if self.max_cases is None else items[: self.max_cases]


def finished_report(job: EvalJob) -> Optional[dict]:
    """``job``'s ``results.json`` when it was made by exactly this run, else ``None``.

    The rule of a resumed run (:func:`utils.run_folder.changed_settings`: runtime flags aside, paths
    compared canonically, a flag newer than the record at its default) with the number of cases
    counted as a setting (a finished report of fewer cases is not this run's), and the checkpoint's
    content unchanged (:func:`utils.run_folder.changed_inputs`). A run that is not reused runs, which
    resumes its finished cases or refuses a folder made otherwise in one line. An unreadable or
    incomplete record counts as not finished, with a warning.
    """
    from utils.run_folder import changed_inputs, changed_settings

    if job.layout is None or not os.path.isfile(job.layout.results):
        return None
    try:
        report = read_json(job.layout.results)
        if not isinstance(report["overall"], dict) or not isinstance(report["args"], dict):
            raise TypeError("not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("%s is unreadable or incomplete (%s); the run is done again", job.layout.results, err)
        return None
    if changed_settings(report["args"], job.record, frozenset(job.runtime_keys) - {"max_cases"}, job.path_keys,
                        job.defaults):
        return None
    if changed_inputs(job.run_dir, job.inputs):
        return None
    return report


def case_name(item: dict) -> str:
    return os.path.basename(str(item["image"]))


def label_name(item: dict) -> str:
    return os.path.basename(str(item["label"]))


MakeAdv = Callable[[dict, torch.Tensor, torch.Tensor, int], tuple]
"""``make_adv(item, image, label, index) -> (adversarial volume, extra per-case report entries)``."""


class CaseEvaluator:
    """Evaluate cases one by one into a run folder (or nowhere, with ``run_dir=None``)."""

    def __init__(self, job: EvalJob, model: nn.Module, device: torch.device, save_volumes: bool):
        from utils.metrics import LPIPSSimilarity

        self.job = job
        self.model = model
        self.device = device
        self.run_dir = job.run_dir
        self.save_volumes = save_volumes and job.run_dir is not None
        self.num_classes = job.model.out_channels
        self.class_names = class_names(job.data, self.num_classes)
        self.lpips = LPIPSSimilarity()
        self.transform = None  # the loading transforms of this run's cases (inverted for --save_predictions)
        self.own_writer = None  # a dataset layout's writer of predictions on the file's grid (from logits)
        self.logits: list = []  # the current case's clean and adversarial logits, for that writer
        self.skipped: dict[str, str] = {}  # case name -> why it has nothing to segment (--skip_empty_cases)

    def case_file(self, name: str) -> str | None:
        return None if self.run_dir is None else self.job.layout.case_record(name)

    def finished(self, item: dict) -> dict | None:
        """The finished case's metrics, or ``None`` to (re)do it: never finished, an unreadable
        marker, or a marker whose saved volume is gone (both redone with a warning)."""
        name = case_name(item)
        path = self.case_file(name)
        if not path or not os.path.exists(path):
            return None
        try:
            case = read_json(path)
        except (OSError, ValueError) as err:
            logger.warning("%s: finished-case record %s is unreadable (%s); the case is done again", name, path, err)
            return None
        wanted = []
        if self.save_volumes:
            wanted.append(self.job.layout.adv_image(name))
        if self.job.save_predictions:
            wanted += list(self.prediction_files(label_name(item)))
        for path in wanted:
            if not os.path.exists(path):
                logger.warning("%s: marked finished but %s is gone; the case is done again", name, path)
                return None
        return case

    def prediction_files(self, name: str) -> tuple[str, str]:
        """Where ``--save_predictions`` writes a case's clean and adversarial label maps (named as its
        label file, as nnU-Net names predictions)."""
        return self.job.layout.predictions(name)

    def run(self, items: list[dict], make_adv: MakeAdv) -> dict[str, dict]:
        """Evaluate ``items`` (datalist entries); returns ``{case name: metrics}`` for this process."""
        results: dict[str, dict] = {}
        todo = []
        rank, world = dist_utils.rank_and_world()
        for index, item in enumerate(items):
            if index % world != rank:  # cases sharded across processes
                continue
            done = self.finished(item)
            if done is not None:
                results[case_name(item)] = done
            else:
                check_files(item, read_data=True)  # a truncated file is one line now, not a loader traceback
                todo.append((index, item))
        if results:
            logger.info("resuming: %d finished case(s) skipped, %d to do", len(results), len(todo))
        if not todo:
            return results
        dataset = build_dataset(self.job.data, self.job.split, "eval", items=[item for _, item in todo])
        self.transform = dataset.transform
        steps = getattr(self.transform, "transforms", (self.transform,))  # MONAI's Dataset wraps it in a Compose
        self.own_writer = getattr(steps[0], "save_prediction", None) if len(steps) == 1 else None
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=1, shuffle=False, num_workers=min(self.job.data.workers, len(todo)),
            collate_fn=lambda batch: batch[0], worker_init_fn=dist_utils.ignore_stop_signals,
        )
        bar = progress(zip(todo, loader), enabled=dist_utils.is_main_process(), total=len(todo), desc="cases",
                       unit="case")
        with CaseFinisher(finishes_in_background(self.job.finish_cases, self.device), self.device) as finisher:
            for (index, item), data in bar:
                dist_utils.check_stop()  # a safe point: every earlier case is complete on disk once it is handled
                name = case_name(item)
                bar.set_postfix_str(name)
                started = time.perf_counter()
                image = plain_tensor(data["image"]).unsqueeze(0).to(self.device)  # [1, C, H, W, D]
                label = plain_tensor(data["label"]).unsqueeze(0).to(self.device)  # [1, 1, H, W, D]
                try:
                    check_case(image[0], label[0], self.num_classes, name)
                except EmptyCase as err:
                    if not self.job.skip_empty:
                        raise
                    logger.warning("skipped (--skip_empty_cases): %s", err)
                    self.skipped[name] = str(err)
                    continue
                affine = getattr(data["image"], "affine", None)
                affine = np.eye(4) if affine is None else np.asarray(affine.cpu() if torch.is_tensor(affine) else affine)
                adv, extra = make_adv(item, image, label, index)
                predictions = self.predict(image, adv)
                finisher.submit(self.finish, results, started, name, label_name(item), image, adv, label,
                                predictions, affine, extra, data["image"])
        return results

    def predict(self, image: torch.Tensor, adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sliding-window class predictions ``[1, 1, H, W, D]`` of the clean and the adversarial volume
        (their logits kept on the CPU when the dataset's writer of predictions needs them)."""
        if self.job.save_predictions and self.own_writer is not None:
            pairs = [predict_volume(self.model, volume, self.job.window, with_logits=True) for volume in (image, adv)]
            self.logits = [logits.cpu() for _, logits in pairs]
            return pairs[0][0], pairs[1][0]
        return predict_volume(self.model, image, self.job.window), predict_volume(self.model, adv, self.job.window)

    def finish(self, results: dict, started: float, name: str, lbl_name: str, image: torch.Tensor,
               adv: torch.Tensor, label: torch.Tensor, predictions: tuple[torch.Tensor, torch.Tensor],
               affine: np.ndarray, extra: Optional[Mapping], loaded=None) -> None:
        """One case's metrics from its two predictions into ``results[name]``, its saved files,
        its finished-case record (written last) and its log line (``loaded``: the loaded image,
        whose transforms ``--save_predictions`` inverts)."""
        from utils.metrics import compute_case_metrics

        pred_clean, pred_adv = predictions
        metrics = compute_case_metrics(
            image[0, 0], adv[0, 0], label[0, 0], pred_clean[0, 0], pred_adv[0, 0],
            num_classes=self.num_classes, lpips=self.lpips,
        )
        case = report_case(metrics, self.class_names)
        case.update(extra or {})
        case["shape"] = list(image.shape[2:])
        if self.run_dir is not None:
            if self.save_volumes:
                self.save(name, lbl_name, image, adv, label, affine)
            if self.job.save_predictions:
                self.save_predictions(lbl_name, predictions, loaded)
            if self.job.save_figures:
                from utils.figures import save_case_figure

                save_case_figure(
                    self.job.layout.figure(name),
                    image[0, 0].cpu().numpy(), adv[0, 0].cpu().numpy(), label[0, 0].cpu().numpy(),
                    pred_clean[0, 0].cpu().numpy(), pred_adv[0, 0].cpu().numpy(), self.class_names,
                    title=f"{name} — {self.job.attack.name}",
                    dice_clean=case["dice_clean"], dice_adv=case["dice_adv"],
                )
            write_json(self.case_file(name), case)  # written last: marks the case finished
        results[name] = case
        logger.info(
            "%s: Dice clean %.2f adv %.2f | HD95 clean %.2f adv %.2f | success %.2f%% | %.1fs",
            name, case["dice_clean"], case["dice_adv"], _nan(case["hd95_clean"]), _nan(case["hd95_adv"]),
            case["success_rate"], time.perf_counter() - started,
        )

    def save_predictions(self, name: str, predictions: tuple[torch.Tensor, torch.Tensor], loaded) -> None:
        """The clean and adversarial label maps on the grid of the case's file."""
        from data.original_grid import to_original_grid

        for path, prediction in zip(self.prediction_files(name), predictions):
            if self.own_writer is not None:  # a dataset layout's own geometry, from the logits
                self.own_writer(path, self.logits.pop(0)[0], loaded)
                continue
            labels, affine = to_original_grid(prediction[0], loaded, self.transform)
            save_nifti(path, labels.astype(np.uint8 if labels.max() < 256 else np.int16), affine)

    def save(self, name: str, lbl_name: str, image, adv, label, affine) -> None:
        layout, dtype = self.job.layout, self.job.save_dtype
        save_nifti(layout.clean_image(name), volume_to_array(image[0, 0], dtype), affine)
        labels = label[0, 0].cpu().numpy()
        save_nifti(layout.clean_label(lbl_name), labels.astype(np.uint8 if labels.max() < 256 else np.int16), affine)
        save_nifti(layout.adv_image(name), volume_to_array(adv[0, 0], dtype), affine)


def finishes_in_background(finish_cases: str, device: torch.device) -> bool:
    """``--finish_cases``: ``auto`` is background when the model runs on an accelerator, inline on a CPU."""
    return finish_cases == "background" or (finish_cases == "auto" and device.type != "cpu")


class CaseFinisher:
    """Finishes cases (``submit(fn, *args)`` runs ``fn(*args)``) one at a time, in order.

    With ``background``, in one worker thread, at most one case behind the caller: case i's
    metrics (HD95 and the rest run on the CPU) and file writing overlap case i+1's attack on
    the accelerator, and a case's error surfaces at the next ``submit`` or at the end. The
    block's exit waits for the pending case, also when an error or a stop signal leaves the
    loop, so that every case handed over is complete on disk. The worker inherits the
    caller's torch thread count and is given its CUDA device, so its numbers equal those of an
    inline run.
    """

    def __init__(self, background: bool, device: torch.device) -> None:
        self._pool = None
        if background:
            on_cuda = device.type == "cuda" and device.index is not None
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="case-finisher",
                                            initializer=torch.cuda.set_device if on_cuda else None,
                                            initargs=(device,) if on_cuda else ())
        self._pending: Optional[Future] = None

    def submit(self, fn: Callable, *args) -> None:
        self.wait()
        if self._pool is None:
            fn(*args)
        else:
            self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        """Block until the pending case is finished; raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> "CaseFinisher":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def _nan(value):
    return float("nan") if value is None else value


def finish_run(job: EvalJob, results: dict[str, dict], evaluator: CaseEvaluator, items: list[dict],
               elapsed: float) -> dict:
    """Gather every process's cases, write ``results.json`` / ``per_case.csv``, print the summary."""
    per_case = dist_utils.gather_cases(results)
    skipped = dist_utils.gather_cases(evaluator.skipped)
    if not dist_utils.is_main_process():
        return {}
    if job.run_dir is not None and job.max_cases is not None:
        # a rerun with a smaller --max_cases keeps reporting the cases finished earlier
        items = job.data.items(job.split)
        for item in items:
            if case_name(item) not in per_case:
                done = evaluator.finished(item)
                if done is not None:
                    per_case[case_name(item)] = done
    order = [case_name(item) for item in items if case_name(item) in per_case]
    per_case = {name: per_case[name] for name in order}
    overall = summarise(per_case, evaluator.class_names) if per_case else {"n_cases": 0}
    # processes and CPU threads: float reductions (hence PGD's gradient signs) depend on the
    # thread count, so runs compare voxel for voxel only at equal threads (torchrun: 1)
    report = {"overall": overall, "definitions": DEFINITIONS, "per_case": per_case, "args": dict(job.record),
              "timing": {"seconds": round(elapsed, 2), "processes": dist_utils.rank_and_world()[1],
                         "torch_threads": torch.get_num_threads()}}
    if skipped:
        report["skipped"] = {name: skipped[name] for name in (case_name(item) for item in items) if name in skipped}
    warning = job.attack.attack_class.review(per_case)
    if warning:
        logger.warning("%s", warning)
    if job.run_dir is not None:
        write_json(job.layout.results, report)
        write_csv(job.layout.per_case, case_rows(per_case))
        logger.info("results written to %s", job.layout.results)
    if per_case:
        print(format_summary(overall, job.title, job.attack.attack_class.summary_lines(overall)), flush=True)
    return report


# --------------------------------------------------------------------------- the two jobs


def load_trained_model(settings: ModelSettings, checkpoint: str, device: torch.device) -> nn.Module:
    """The network of ``settings`` with the weights of ``checkpoint`` (or its own, for a model that
    loads them itself, e.g. an nnU-Net folder), in eval mode."""
    from networks import get_model_entry

    model = settings.build()
    if get_model_entry(settings.name).loads_weights and not checkpoint:
        logger.info("model %s built with its own weights", settings.name)
    else:
        load_model_weights(model, checkpoint, given=settings.flags())
        logger.info("model %s loaded from %s", settings.name, checkpoint)
    return model.to(device).eval()


def _start(job: EvalJob, held: contextlib.ExitStack) -> None:
    """The run folder and its log file (locked until ``held`` closes), once this process is in its group."""
    from utils.logs import setup_logging

    if job.run_dir is not None:
        held.enter_context(run_lock(job.run_dir))
        prepare_run_dir(job.run_dir, job.record, job.runtime_keys, job.overwrite, job.path_keys, job.defaults,
                        inputs=job.inputs,
                        folder_flag="--save_adv_images_dir" if job.adv_folder is None else "--results_dir")
    log_file = job.layout.log if job.run_dir and dist_utils.is_main_process() else None
    setup_logging(log_file, job.verbose)


def run_generation(job: EvalJob) -> dict:
    """Attack every case of the split, report clean vs adversarial metrics, save volumes.

    One process, or one rank of a ``torchrun``/``srun`` launch (cases sharded by index,
    rank 0 merges the report); ``--distributed`` without a launcher spawns one process per
    GPU. Returns the report on rank 0, ``{}`` elsewhere and in the parent of spawned processes.
    """
    return dist_utils.launch(_run_generation, job, job.launch, "generate_adv_samples.py") or {}


def run_inference(job: EvalJob) -> dict:
    """Evaluate a model on clean volumes vs adversarial volumes saved by a generation run.

    Launches as :func:`run_generation` does (sharded cases, ``--distributed`` spawn).
    """
    return dist_utils.launch(_run_inference, job, job.launch, "inference_on_saved_adv_samples.py") or {}


def _run_job(job: EvalJob, device: torch.device, prepare: Callable[[nn.Module], MakeAdv], save_volumes: bool) -> dict:
    """What both jobs share: stops at safe points, the locked run folder, the model, the case
    loop and the report; ``prepare(model)`` gives the job's way to get adversarial volumes."""
    with dist_utils.stop_on_signals(), contextlib.ExitStack() as held:
        from utils.logs import setup_logging

        started = time.perf_counter()
        setup_logging(None, job.verbose)
        items = job.items()
        model = load_trained_model(job.model, job.checkpoint, device)  # a wrong checkpoint leaves no folder
        _start(job, held)  # the run folder, once the run has started correctly
        model = with_precision(compiled(model, job.compile), job.precision)
        evaluator = CaseEvaluator(job, model, device, save_volumes=save_volumes)
        results = evaluator.run(items, prepare(model))
        return finish_run(job, results, evaluator, items, time.perf_counter() - started)


def _run_generation(job: EvalJob, device: torch.device) -> dict:
    def prepare(model: nn.Module) -> MakeAdv:
        logger.info("generating adversarial %s cases under %s", job.split, job.attack.summary())
        attack = job.attack.build(model, build_dice_ce(fused=job.fused_loss))

        def make_adv(item, image, label, index):
            seed_everything(job.seed + index)  # per case: sharded runs equal one-process runs
            note = attack.describe_input(image)
            if note:
                logger.info("%s: %s", case_name(item), note)
            sums: dict = {}

            def attack_and_measure(tiles, tile_labels):  # adds up what each tile batch's call reports
                dist_utils.check_stop()  # a safe point: nothing of this case is on disk yet
                adv_tiles = attack(tiles, tile_labels)
                for key, value in (attack.call_parts() or {}).items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                return adv_tiles

            candidates: dict = {}  # an ensemble's members, stitched too
            adv = job.attack.attack_volume(attack_and_measure, image, label, job.model.roi,
                                           progress=dist_utils.is_main_process(), candidates=candidates,
                                           offered=attack.call_candidates)
            if not bool(adv.isfinite().all()):
                raise UserError(f"case {case_name(item)}: {job.attack.name} produced NaN or Inf voxels; check the "
                                "attack's settings (nothing is reported from it)")
            extra = attack.case_metrics(sums)
            if candidates:
                adv, extra["volume_winner"] = worst_volume(model, job.window, {"per-tile": adv, **candidates},
                                                           job.attack.labels(label), job.attack.targeted,
                                                           job.model.out_channels)
            return adv, extra

        return make_adv

    return _run_job(job, device, prepare, save_volumes=True)


def worst_volume(model: nn.Module, window: WindowSettings, volumes: Mapping[str, torch.Tensor],
                 attack_labels: torch.Tensor, targeted: bool, num_classes: int) -> tuple:
    """Of several adversarial versions of one volume, the one that hurts most.

    Each is predicted whole (sliding window); untargeted, the lowest mean Dice against the
    true labels wins, targeted the highest against the target labels; ties go to the first.

    Args:
        model: the evaluated network.
        window: sliding-window settings.
        volumes: ``{name: [1, C, H, W, D]}``.
        attack_labels: ``[1, 1, H, W, D]`` labels the attack was given.
        targeted: whether those are target labels.
        num_classes: the model's classes.

    Returns:
        ``(volume, name)`` of the winner.
    """
    from utils.metrics import class_mean, dice_per_class

    best = None
    for name, volume in volumes.items():
        dice = class_mean(dice_per_class(predict_volume(model, volume, window), attack_labels, num_classes))
        score = -dice if targeted else dice
        if best is None or score < best[0]:
            best = (score, name, volume)
    return best[2], best[1]


def _run_inference(job: EvalJob, device: torch.device) -> dict:
    def prepare(model: nn.Module) -> MakeAdv:
        logger.info("evaluating %s on saved adversarial volumes in %s", job.checkpoint, job.adv_folder)
        return load_adv

    def load_adv(item, image, label, index):
        path = job.adv_layout.adv_image(case_name(item))
        if not os.path.exists(path):
            raise UserError(f"saved adversarial volume missing: {path}; generate it first or check --adv_images_dir")
        array, _ = load_nifti(path)
        if tuple(array.shape) != tuple(image.shape[2:]):
            raise UserError(
                f"{path} has shape {tuple(array.shape)} but case {case_name(item)} loads as {tuple(image.shape[2:])}; "
                "use the same data flags (--space_*, --a_min/--a_max, --dataset) as the generation run"
            )
        volume = torch.from_numpy(array_to_volume(array)).to(image)[None, None]
        if not bool(volume.isfinite().all()):
            raise UserError(f"{path} holds NaN or Inf voxels; regenerate it (no metric is computed from it)")
        return volume, {}

    return _run_job(job, device, prepare, save_volumes=False)
