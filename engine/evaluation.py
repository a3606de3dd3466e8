"""Whole-volume attack and evaluation, shared by the generation and inference scripts.

A case flows through one path whichever script runs it: load (eval transforms), get
an adversarial volume (attack it tile by tile, or read it from disk), predict both
volumes with sliding-window inference, compute the metrics, save what was asked, and
record the case as finished so that a rerun skips it.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from tqdm.auto import tqdm

from utils import distributed as dist_utils
from utils.errors import UserError
from utils.io import array_to_volume, load_nifti, read_json, save_nifti, volume_to_array, write_csv, write_json

logger = logging.getLogger(__name__)

# Flags that do not change a run's numbers: a run folder may be resumed with others.
RUNTIME_FLAGS = {
    "device", "workers", "overwrite", "debugging", "verbose", "attack_batch_size", "sw_batch_size",
    "save_figures", "max_cases", "distributed", "world_size", "rank", "dist_url", "dist_backend",
    "results_dir", "exp_name", "use_normal_dataset",
}
RUN_FILES = ("results.json", "per_case.csv", "args.json", "log.out")
RUN_FOLDERS = ("cases", "figures", "imagesTsClean", "labelsTsClean", "imagesTsAdv",
               "imagesTrClean", "labelsTrClean", "imagesTrAdv")


# --------------------------------------------------------------------------- whole-volume attack


def tile_slices(spatial_shape: Sequence[int], roi: Sequence[int]) -> list[tuple[slice, ...]]:
    """Non-overlapping ROI tiles covering a volume, as the release tiles it.

    ``dense_patch_slices`` with ``scan_interval = roi``: tiles in row-major order of the
    tile grid; where a side is not a multiple of the ROI the last tile is moved back to
    end at the border (it overlaps its neighbour and, written last, wins). Sides smaller
    than the ROI must be padded first (see :func:`attack_volume`).
    """
    return list(dense_patch_slices(tuple(spatial_shape), tuple(roi), tuple(roi)))


def attack_volume(
    image: torch.Tensor,
    label: torch.Tensor,
    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    roi: Sequence[int],
    batch_size: int = 6,
    progress: bool = True,
) -> torch.Tensor:
    """Attack a whole volume in ROI tiles and stitch the adversarial tiles back.

    Args:
        image: ``[1, C, H, W, D]`` in [0, 1].
        label: ``[1, 1, H, W, D]`` labels the attack uses (true or target labels).
        attack: ``attack(images [N,C,*roi], labels [N,1,*roi]) -> adv [N,C,*roi]``.
        roi: tile size ``(rx, ry, rz)``.
        batch_size: tiles attacked together.

    Returns:
        ``[1, C, H, W, D]`` adversarial volume.
    """
    if image.shape[0] != 1:
        raise ValueError(f"attack_volume takes one volume [1, C, H, W, D], got shape {tuple(image.shape)}")
    spatial = tuple(image.shape[2:])
    padded = tuple(max(s, r) for s, r in zip(spatial, roi))
    if padded != spatial:
        # sides smaller than the ROI: pad at the end (image with 0, label with background)
        pad = [p for s, q in zip(reversed(spatial), reversed(padded)) for p in (0, q - s)]
        image = torch.nn.functional.pad(image, pad)
        label = torch.nn.functional.pad(label, pad)
    slices = tile_slices(padded, roi)
    adv = image.clone()
    starts = range(0, len(slices), batch_size)
    for start in tqdm(starts, desc="tiles", leave=False, disable=not progress, unit="batch"):
        chunk = slices[start : start + batch_size]
        tiles = torch.cat([image[(..., *s)] for s in chunk])  # [N, C, *roi]
        tile_labels = torch.cat([label[(..., *s)] for s in chunk])  # [N, 1, *roi]
        adv_tiles = attack(tiles, tile_labels)  # [N, C, *roi]
        for s, tile in zip(chunk, adv_tiles):
            adv[(..., *s)] = tile
    return adv[(..., *(slice(0, s) for s in spatial))]


@torch.no_grad()
def predict(model: nn.Module, image: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """Sliding-window prediction ``[1, 1, H, W, D]`` (argmax of the logits)."""
    roi = (args.roi_x, args.roi_y, args.roi_z)
    logits = sliding_window_inference(image, roi, args.sw_batch_size, model, overlap=args.infer_overlap)
    return logits.argmax(dim=1, keepdim=True)


# --------------------------------------------------------------------------- run folder


def fingerprint(args: argparse.Namespace) -> dict:
    """The arguments that determine a run's numbers."""
    from utils.io import to_jsonable

    return {k: v for k, v in to_jsonable(vars(args)).items() if k not in RUNTIME_FLAGS}


def prepare_run_dir(run_dir: str, args: argparse.Namespace) -> None:
    """Create or reuse a run folder: never silently mix two different runs.

    An existing folder whose ``args.json`` records other numbers-changing flags is an
    error unless ``--overwrite``; with ``--overwrite`` only the files this tool writes
    are removed. Anything else in the folder is left alone.
    """
    args_file = os.path.join(run_dir, "args.json")
    if os.path.isdir(run_dir) and args.overwrite:
        if dist_utils.is_main_process():
            for name in RUN_FOLDERS:
                shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
            for name in RUN_FILES:
                if os.path.exists(os.path.join(run_dir, name)):
                    os.remove(os.path.join(run_dir, name))
        dist_utils.barrier()
    elif os.path.exists(args_file):
        previous = read_json(args_file)
        now = fingerprint(args)
        changed = sorted(k for k in set(previous) | set(now) if k not in RUNTIME_FLAGS and previous.get(k) != now.get(k))
        if changed:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
            raise UserError(
                f"run folder {run_dir} holds a run with other settings ({details}); "
                "pass --overwrite to replace it or choose another output folder"
            )
    if dist_utils.is_main_process():
        os.makedirs(os.path.join(run_dir, "cases"), exist_ok=True)
        from utils.io import to_jsonable

        write_json(args_file, to_jsonable(vars(args)))
    dist_utils.barrier()


def case_name(item: dict) -> str:
    return os.path.basename(str(item["image"]))


def label_name(item: dict) -> str:
    return os.path.basename(str(item["label"]))


# --------------------------------------------------------------------------- reports


def summarise(per_case: dict[str, dict], class_names: Sequence[str]) -> dict:
    """Means over cases (each case already averaged over classes, as the paper reports)."""
    scalar_keys = [k for k, v in next(iter(per_case.values())).items() if isinstance(v, (int, float)) or v is None]
    overall: dict = {"n_cases": len(per_case)}
    for key in scalar_keys:
        values = [c[key] for c in per_case.values() if c.get(key) is not None]
        overall[key] = float(np.mean(values)) if values else None
    per_organ = {}
    for organ in class_names:
        entry = {}
        for key in ("dice_clean", "dice_adv", "hd95_clean", "hd95_adv"):
            values = [c["per_organ"][organ][key] for c in per_case.values()
                      if organ in c.get("per_organ", {}) and c["per_organ"][organ].get(key) is not None]
            entry[key] = float(np.mean(values)) if values else None
        per_organ[organ] = entry
    overall["per_organ"] = per_organ
    return overall


def case_rows(per_case: dict[str, dict]) -> list[dict]:
    rows = []
    for name, case in per_case.items():
        row = {"case": name}
        row.update({k: v for k, v in case.items() if not isinstance(v, (dict, list))})
        for organ, values in case.get("per_organ", {}).items():
            for key in ("dice_clean", "dice_adv"):
                row[f"{key}[{organ}]"] = values.get(key)
        rows.append(row)
    return rows


def format_summary(overall: dict, title: str) -> str:
    def fmt(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lpips_note = "" if overall.get("lpips_similarity") is not None else "  (AlexNet weights not cached)"
    lines = [
        f"== {title} ({overall['n_cases']} cases)",
        f"Mean Dice   clean {fmt(overall.get('dice_clean'))}  adv {fmt(overall.get('dice_adv'))}  (%)",
        f"Mean HD95   clean {fmt(overall.get('hd95_clean'))}  adv {fmt(overall.get('hd95_adv'))}  (voxels)",
        f"Voxel attack success rate {fmt(overall.get('success_rate'))} %",
        f"SSIM {fmt(overall.get('ssim'), 4)}   PSNR {fmt(overall.get('psnr'))} dB   "
        f"LPIPS similarity {fmt(overall.get('lpips_similarity'))}{lpips_note}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the case loop


class CaseEvaluator:
    """Evaluate cases one by one into a run folder (or nowhere, with ``--debugging``)."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, device: torch.device, run_dir: str | None,
                 split: str, save_volumes: bool):
        from utils.metrics import CLASS_NAMES, LPIPSSimilarity

        self.args = args
        self.model = model
        self.device = device
        self.run_dir = run_dir
        self.save_volumes = save_volumes and run_dir is not None
        self.tag = "Tr" if split == "training" else "Ts"
        names = CLASS_NAMES.get(args.dataset, [])
        self.class_names = names if len(names) == args.out_channels else [f"class_{i}" for i in range(args.out_channels)]
        self.lpips = LPIPSSimilarity()

    def case_file(self, name: str) -> str | None:
        return None if self.run_dir is None else os.path.join(self.run_dir, "cases", f"{name}.json")

    def finished(self, name: str) -> dict | None:
        path = self.case_file(name)
        if path and os.path.exists(path):
            return read_json(path)
        return None

    def run(self, items: list[dict], make_adv: Callable[[dict, torch.Tensor, torch.Tensor, int], torch.Tensor]) -> dict[str, dict]:
        """Evaluate ``items`` (datalist entries); returns ``{case name: metrics}`` for this process."""
        from monai.data import Dataset

        from data.loading import build_transforms, check_case, check_files

        results: dict[str, dict] = {}
        todo = []
        rank, world = dist_utils.rank_and_world()
        for index, item in enumerate(items):
            if index % world != rank:  # cases sharded across processes
                continue
            done = self.finished(case_name(item))
            if done is not None:
                results[case_name(item)] = done
            else:
                check_files(item)
                todo.append((index, item))
        if results:
            logger.info("resuming: %d finished case(s) skipped, %d to do", len(results), len(todo))
        if not todo:
            return results
        dataset = Dataset(data=[item for _, item in todo], transform=build_transforms(self.args, "eval"))
        loader = torch.data.loading.DataLoader(
            dataset, batch_size=1, shuffle=False, num_workers=min(self.args.workers, len(todo)),
            collate_fn=lambda batch: batch[0],
        )
        bar = tqdm(zip(todo, loader), total=len(todo), desc="cases", unit="case",
                   disable=not dist_utils.is_main_process())
        for (index, item), data in bar:
            name = case_name(item)
            bar.set_postfix_str(name)
            started = time.perf_counter()
            # plain tensors: MetaTensor's per-op bookkeeping costs more than the model on small volumes
            image = _plain(data["image"]).unsqueeze(0).to(self.device)  # [1, C, H, W, D]
            label = _plain(data["label"]).unsqueeze(0).to(self.device)  # [1, 1, H, W, D]
            check_case(image[0], label[0], self.args.out_channels, name)
            affine = getattr(data["image"], "affine", None)
            affine = np.eye(4) if affine is None else np.asarray(affine.cpu() if torch.is_tensor(affine) else affine)
            adv = make_adv(item, image, label, index)
            results[name] = self.evaluate(name, label_name(item), image, adv, label, affine)
            logger.info(
                "%s: Dice clean %.2f adv %.2f | HD95 clean %.2f adv %.2f | success %.2f%% | %.1fs",
                name, results[name]["dice_clean"], results[name]["dice_adv"],
                _nan(results[name]["hd95_clean"]), _nan(results[name]["hd95_adv"]),
                results[name]["success_rate"], time.perf_counter() - started,
            )
        return results

    def evaluate(self, name: str, lbl_name: str, image: torch.Tensor, adv: torch.Tensor, label: torch.Tensor,
                 affine: np.ndarray) -> dict:
        from utils.metrics import compute_case_metrics

        self.model.eval()
        pred_clean = predict(self.model, image, self.args)
        pred_adv = predict(self.model, adv, self.args)
        metrics = compute_case_metrics(
            image[0, 0], adv[0, 0], label[0, 0], pred_clean[0, 0], pred_adv[0, 0],
            num_classes=self.args.out_channels, lpips=self.lpips,
        )
        case = report_case(metrics, self.class_names)
        case["shape"] = list(image.shape[2:])
        if self.run_dir is not None:
            if self.save_volumes:
                self.save(name, lbl_name, image, adv, label, affine)
            if self.args.save_figures:
                from utils.figures import save_case_figure

                save_case_figure(
                    os.path.join(self.run_dir, "figures", f"{name.split('.')[0]}.png"),
                    image[0, 0].cpu().numpy(), adv[0, 0].cpu().numpy(), label[0, 0].cpu().numpy(),
                    pred_clean[0, 0].cpu().numpy(), pred_adv[0, 0].cpu().numpy(), self.class_names,
                    title=f"{name} — {self.args.attack_name}",
                    dice_clean=case["dice_clean"], dice_adv=case["dice_adv"],
                )
            write_json(self.case_file(name), case)  # written last: marks the case finished
        return case

    def save(self, name: str, lbl_name: str, image, adv, label, affine) -> None:
        root, tag, dtype = self.run_dir, self.tag, self.args.save_dtype
        save_nifti(os.path.join(root, f"images{tag}Clean", f"clean_{name}"), volume_to_array(image[0, 0], dtype), affine)
        labels = label[0, 0].cpu().numpy()
        save_nifti(os.path.join(root, f"labels{tag}Clean", lbl_name),
                   labels.astype(np.uint8 if labels.max() < 256 else np.int16), affine)
        save_nifti(os.path.join(root, f"images{tag}Adv", f"adv_{name}"), volume_to_array(adv[0, 0], dtype), affine)


def _plain(tensor) -> torch.Tensor:
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)


def _nan(value):
    return float("nan") if value is None else value


def report_case(metrics: dict, class_names: Sequence[str]) -> dict:
    """Per-case metrics as reported: Dice and success rate ×100, LPIPS similarity ×100."""
    def pct(x):
        return None if x is None or (isinstance(x, float) and np.isnan(x)) else 100.0 * float(x)

    def num(x):
        return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else float(x)

    case = {
        "dice_clean": pct(metrics["dice_clean_mean"]),
        "dice_adv": pct(metrics["dice_adv_mean"]),
        "hd95_clean": num(metrics["hd95_clean_mean"]),
        "hd95_adv": num(metrics["hd95_adv_mean"]),
        "success_rate": pct(metrics["success_rate"]),
        "ssim": num(metrics["ssim"]),
        "psnr": num(metrics["psnr"]),
        "lpips_similarity": pct(metrics.get("lpips_similarity")),
    }
    case["per_organ"] = {
        organ: {
            "dice_clean": pct(metrics["dice_clean"][i]),
            "dice_adv": pct(metrics["dice_adv"][i]),
            "hd95_clean": num(metrics["hd95_clean"][i]),
            "hd95_adv": num(metrics["hd95_adv"][i]),
        }
        for i, organ in enumerate(class_names)
    }
    return case


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def finish_run(args: argparse.Namespace, run_dir: str | None, results: dict[str, dict], evaluator: CaseEvaluator,
               items: list[dict], title: str, elapsed: float) -> dict:
    """Gather every process's cases, write ``results.json`` / ``per_case.csv``, print the summary."""
    per_case = dist_utils.gather_cases(results)
    if not dist_utils.is_main_process():
        return {}
    order = [case_name(item) for item in items if case_name(item) in per_case]
    per_case = {name: per_case[name] for name in order}
    overall = summarise(per_case, evaluator.class_names) if per_case else {"n_cases": 0}
    from utils.io import to_jsonable

    # processes and CPU threads: float reductions (hence PGD's gradient signs) depend on the
    # thread count, so runs compare voxel for voxel only at equal threads (torchrun: 1)
    report = {"overall": overall, "per_case": per_case, "args": to_jsonable(vars(args)),
              "timing": {"seconds": round(elapsed, 2), "processes": dist_utils.rank_and_world()[1],
                         "torch_threads": torch.get_num_threads()}}
    if run_dir is not None:
        write_json(os.path.join(run_dir, "results.json"), report)
        write_csv(os.path.join(run_dir, "per_case.csv"), case_rows(per_case))
        logger.info("results written to %s", os.path.join(run_dir, "results.json"))
    if per_case:
        print(format_summary(overall, title), flush=True)
    return report


# --------------------------------------------------------------------------- the two jobs


def load_trained_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The model of the model flags with the weights of ``--pretrained_path``, in eval mode."""
    from networks import build_model_from_args
    from networks.checkpoint import load_model_weights

    model = build_model_from_args(args)
    load_model_weights(model, args.pretrained_path)
    logger.info("model %s loaded from %s", args.model_name, args.pretrained_path)
    return model.to(device).eval()


def _eval_items(args: argparse.Namespace) -> tuple[str, list[dict]]:
    from data.loading import load_datalist, split_for_mode

    split = split_for_mode(args.gen_train_adv_mode)
    items = load_datalist(args.data_dir, args.json_list, split)
    if args.max_cases is not None:
        items = items[: args.max_cases]
    return split, items


def _start(args: argparse.Namespace, run_dir: str | None, device: torch.device | None) -> torch.device:
    """Logging and the run folder, once this process is in its group (``device`` from
    :func:`utils.distributed.process_group`; ``None`` in one process: ``--device``)."""
    from engine.cli import resolve_device, setup_logging

    if device is None:
        device = resolve_device(args.device)
    log_file = os.path.join(run_dir, "log.out") if run_dir and dist_utils.is_main_process() else None
    setup_logging(log_file, args.verbose)
    if run_dir is not None:
        prepare_run_dir(run_dir, args)
    return device


def _launch(entry, job, args: argparse.Namespace, script: str) -> dict:
    """Run ``job(args, device)`` in this process's group, or spawn ``entry`` once per GPU."""
    if dist_utils.needs_spawn(args):
        dist_utils.spawn_script(entry, args, script)
        return {}
    with dist_utils.process_group(args) as device:
        return job(args, device)


def run_generation(args: argparse.Namespace) -> dict:
    """Attack every case of the split, report clean vs adversarial metrics, save volumes.

    One process, or one rank of a ``torchrun``/``srun`` launch (cases sharded by index,
    rank 0 merges the report); ``--distributed`` without a launcher spawns one process per
    GPU (:func:`utils.distributed.spawn_script`). Returns the report on rank 0, ``{}``
    elsewhere and in the parent of spawned processes.
    """
    return _launch(run_generation, _run_generation, args, "generate_adv_samples.py")


def _run_generation(args: argparse.Namespace, device: torch.device | None) -> dict:
    from engine.cli import adv_subdir_name, attack_summary, build_attack_from_args
    from engine.losses import build_dice_ce

    started = time.perf_counter()
    run_dir = None if args.debugging else os.path.join(
        args.save_adv_images_dir, "" if args.no_sub_dir_adv_images else adv_subdir_name(args))
    if run_dir is not None:
        run_dir = os.path.normpath(run_dir)
    split, items = _eval_items(args)
    device = _start(args, run_dir, device)
    logger.info("generating adversarial %s cases under %s", split, attack_summary(args))
    model = load_trained_model(args, device)
    attack = build_attack_from_args(args, model, build_dice_ce())
    roi = (args.roi_x, args.roi_y, args.roi_z)

    def make_adv(item, image, label, index):
        seed_everything(args.seed + index)  # per case: sharded runs equal one-process runs
        if args.targeted:
            label = torch.full_like(label, args.target_class)
        return attack_volume(image, label, attack, roi, args.attack_batch_size,
                             progress=dist_utils.is_main_process())

    evaluator = CaseEvaluator(args, model, device, run_dir, split, save_volumes=True)
    results = evaluator.run(items, make_adv)
    return finish_run(args, run_dir, results, evaluator, items, attack_summary(args), time.perf_counter() - started)


def adv_images_folder(args: argparse.Namespace) -> str:
    from engine.cli import adv_subdir_name

    folder = args.adv_images_dir if args.no_sub_dir_adv_images else os.path.join(args.adv_images_dir, adv_subdir_name(args))
    if not os.path.isdir(folder):
        hint = "" if args.no_sub_dir_adv_images else " (the attack flags name the sub-folder; pass --no_sub_dir_adv_images to use the folder itself)"
        raise UserError(f"adversarial images folder not found: {folder}{hint}")
    return os.path.normpath(folder)


def run_inference(args: argparse.Namespace) -> dict:
    """Evaluate a model on clean volumes vs adversarial volumes saved by a generation run.

    Launches as :func:`run_generation` does (sharded cases, ``--distributed`` spawn).
    """
    return _launch(run_inference, _run_inference, args, "inference_on_saved_adv_samples.py")


def _run_inference(args: argparse.Namespace, device: torch.device | None) -> dict:
    from engine.cli import attack_summary

    started = time.perf_counter()
    folder = adv_images_folder(args)
    split, items = _eval_items(args)
    tag = "Tr" if split == "training" else "Ts"
    stem = os.path.splitext(os.path.basename(args.pretrained_path))[0]
    run_dir = None if args.debugging else os.path.normpath(args.results_dir or os.path.join(folder, "inference", stem))
    device = _start(args, run_dir, device)
    logger.info("evaluating %s on saved adversarial volumes in %s", args.pretrained_path, folder)
    model = load_trained_model(args, device)

    def load_adv(item, image, label, index):
        path = os.path.join(folder, f"images{tag}Adv", f"adv_{case_name(item)}")
        if not os.path.exists(path):
            raise UserError(f"saved adversarial volume missing: {path}; generate it first or check --adv_images_dir")
        array, _ = load_nifti(path)
        if tuple(array.shape) != tuple(image.shape[2:]):
            raise UserError(
                f"{path} has shape {tuple(array.shape)} but case {case_name(item)} loads as {tuple(image.shape[2:])}; "
                "use the same data flags (--space_*, --a_min/--a_max, --dataset) as the generation run"
            )
        return torch.from_numpy(array_to_volume(array)).to(image)[None, None]

    evaluator = CaseEvaluator(args, model, device, run_dir, split, save_volumes=False)
    results = evaluator.run(items, load_adv)
    return finish_run(args, run_dir, results, evaluator, items, f"saved {attack_summary(args)}", time.perf_counter() - started)
