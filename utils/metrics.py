"""Per-case metrics as the paper reports them (and as its code release computes them).

All functions return fractions (Dice, success rate, SSIM and LPIPS similarity in [0, 1]);
the reporting layer multiplies by 100 where the paper prints percentages. HD95 is in
voxels of the resampled grid unless ``spacing`` is given, as in the reference (which
passes no spacing, after resampling to 1.5 x 1.5 x 2.0 mm).

Reference facts followed here (``evaluate_attack_performance.py`` of the paper's code):

- Dice and HD95 come from MONAI ``DiceMetric`` / ``HausdorffDistanceMetric`` with the
  background class included, on one-hot ground truth and one-hot argmax predictions.
- A class absent from the ground truth has Dice NaN (whatever is predicted); a class
  present in the ground truth but not predicted has Dice 0.
- HD95 is NaN for a class missing from the prediction, the ground truth or both (MONAI
  returns infinite surface distances there and the 95th percentile of those is NaN, under
  the reference's MONAI 0.7 / numpy 1.23 as under MONAI 1.6).
- The mean over classes is ``nanmean`` (NaN classes are skipped); the mean over cases
  is a plain mean of those per-case means (left to the reporting layer).
- LPIPS similarity is ``1 - LPIPS_alex`` averaged over the axial slices (last axis),
  each slice a 1-channel image scaled to [-1, 1].

Where we differ: the reference's SSIM is scikit-image's 2D SSIM per axial slice (uniform
7x7 window, on x255 values); :func:`ssim3d` is the 3D Gaussian SSIM of ``pytorch_msssim``,
so SSIM values are not comparable with the reference's printout (the paper's tables do
not report SSIM).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from monai.metrics import compute_hausdorff_distance
from pytorch_msssim import ssim as _ms_ssim

__all__ = [
    "ALEXNET_WEIGHTS_FILE",
    "LPIPSSimilarity",
    "alexnet_weights_path",
    "build_lpips_alex",
    "class_mean",
    "compute_case_metrics",
    "dice_per_class",
    "hd95_per_class",
    "psnr",
    "ssim3d",
    "success_rate",
]

logger = logging.getLogger(__name__)

ArrayLike = Union[torch.Tensor, np.ndarray]



# ---------------------------------------------------------------------------------------
# input handling


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _volume(x: ArrayLike, name: str) -> torch.Tensor:
    """``[H, W, D]``, ``[1, H, W, D]`` or ``[1, 1, H, W, D]`` -> ``[H, W, D]``."""
    t = _as_tensor(x)
    while t.ndim > 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(
            f"{name} must be one volume [H, W, D], [1, H, W, D] or [1, 1, H, W, D], got shape {tuple(_as_tensor(x).shape)}"
        )
    return t


def _label_volume(x: ArrayLike, name: str, num_classes: int) -> torch.Tensor:
    t = _volume(x, name)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values")
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"{name} values must lie in [0, {num_classes - 1}] for num_classes={num_classes}, "
            f"got range [{int(t.min())}, {int(t.max())}]"
        )
    return t


def _label_pair(pred: ArrayLike, label: ArrayLike, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred_t = _label_volume(pred, "pred", num_classes)
    label_t = _label_volume(label, "label", num_classes).to(pred_t.device)
    if pred_t.shape != label_t.shape:
        raise ValueError(f"pred and label must have the same shape, got {tuple(pred_t.shape)} and {tuple(label_t.shape)}")
    return pred_t, label_t


def _class_mask(volume: torch.Tensor, class_index: int) -> torch.Tensor:
    """Channel ``class_index`` of the one-hot encoding: ``[H, W, D]`` indices -> ``[1, 1, H, W, D]`` bool.

    The metrics run one class at a time, which gives MONAI's per-class results on the full
    one-hot ``[1, N, H, W, D]`` without holding (and MONAI converting to float) all of it.
    """
    return (volume == class_index)[None, None]  # [1, 1, H, W, D]


# ---------------------------------------------------------------------------------------
# segmentation metrics


def dice_per_class(pred: ArrayLike, label: ArrayLike, num_classes: int) -> torch.Tensor:
    """Dice of each class, background included (MONAI ``DiceMetric`` semantics).

    Args:
        pred: predicted class indices (argmax of the logits), ``[H, W, D]``, ``[1, H, W, D]``
            or ``[1, 1, H, W, D]``.
        label: ground-truth class indices, same shape.
        num_classes: number of classes ``N`` (14 for Synapse).

    Returns:
        ``[N]`` float tensor on ``pred``'s device: ``2|P∩G| / (|P| + |G|)`` per class,
        NaN where the class is absent from the ground truth.

    Raises:
        ValueError: shapes differ, or values are not class indices in ``[0, N)``.
    """
    pred_t, label_t = _label_pair(pred, label, num_classes)
    # one pass over the volume: the confusion matrix (rows: truth, columns: prediction), in
    # exact integer counts, instead of a one-hot mask and three sums per class
    confusion = torch.bincount((label_t * num_classes + pred_t).flatten(), minlength=num_classes**2)
    confusion = confusion.view(num_classes, num_classes).double()
    truth, predicted = confusion.sum(dim=1), confusion.sum(dim=0)
    dice = 2 * confusion.diagonal() / (truth + predicted)
    return torch.where(truth > 0, dice, torch.full_like(dice, math.nan)).float()


def hd95_per_class(
    pred: ArrayLike,
    label: ArrayLike,
    num_classes: int,
    spacing: Optional[Union[float, Sequence[float]]] = None,
) -> torch.Tensor:
    """95th-percentile symmetric Hausdorff distance of each class, background included.

    MONAI ``HausdorffDistanceMetric(include_background=True, percentile=95,
    distance_metric="euclidean")`` semantics. Computed on the CPU (MONAI's KD-tree path;
    the same numbers whatever the input device), the classes spread over
    ``torch.get_num_threads()`` threads (the KD-tree queries release the GIL).

    Args:
        pred: predicted class indices, ``[H, W, D]``, ``[1, H, W, D]`` or ``[1, 1, H, W, D]``.
        label: ground-truth class indices, same shape.
        num_classes: number of classes ``N``.
        spacing: voxel size per axis (or one number); ``None`` measures in voxels, as the
            reference does.

    Returns:
        ``[N]`` float tensor on the CPU, NaN where the class is missing from the
        prediction or the ground truth.

    Raises:
        ValueError: shapes differ, or values are not class indices in ``[0, N)``.
    """
    pred_t, label_t = _label_pair(pred, label, num_classes)
    pred_t, label_t = pred_t.cpu(), label_t.cpu()
    boxes = _class_boxes(pred_t, label_t, num_classes)
    with warnings.catch_warnings():
        # MONAI warns for every class missing from pred or label, and about its own deprecations
        warnings.filterwarnings("ignore", message=".*is all 0, this may result in nan/inf distance.*")
        warnings.filterwarnings("ignore", category=FutureWarning)

        def one_class(c: int) -> torch.Tensor:  # [1, 1]
            # MONAI crops each class to the box of pred | label (plus one voxel, zero-padded past
            # the border) before it finds edges; cropping to that box first gives it the same
            # array without a pass over the whole volume per class
            box = boxes[c] if boxes[c] is not None else tuple(slice(0, 0) for _ in range(3))
            return compute_hausdorff_distance(
                _class_mask(pred_t[box], c),
                _class_mask(label_t[box], c),
                include_background=True,
                distance_metric="euclidean",
                percentile=95,
                directed=False,
                spacing=spacing,
            )

        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            distances = list(pool.map(one_class, range(num_classes)))
    return torch.cat(distances, dim=1)[0].float()


def _class_boxes(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> list:
    """Per class, the slices of the bounding box of ``pred == c | label == c`` grown by one voxel
    (clamped to the volume); ``None`` for a class in neither. One pass per axis for all classes."""
    present = []
    for axis, size in enumerate(pred.shape):
        index = torch.arange(size).view([-1 if a == axis else 1 for a in range(3)])
        hits = torch.zeros(num_classes * size, dtype=torch.long)
        for volume in (pred, label):
            hits += torch.bincount((volume * size + index).flatten(), minlength=num_classes * size)
        present.append(hits.view(num_classes, size) > 0)  # [N, size]: class c occurs at this position
    boxes = []
    for c in range(num_classes):
        if not bool(present[0][c].any()):
            boxes.append(None)
            continue
        box = []
        for axis, size in enumerate(pred.shape):
            where = present[axis][c].nonzero()
            box.append(slice(max(int(where[0]) - 1, 0), min(int(where[-1]) + 2, size)))
        boxes.append(tuple(box))
    return boxes


def class_mean(values: Union[torch.Tensor, Sequence[float]]) -> float:
    """Mean over classes skipping NaN (the reference's ``np.nanmean``); NaN if all are NaN."""
    numbers = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    kept = [v for v in numbers if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def success_rate(pred_clean: ArrayLike, pred_adv: ArrayLike) -> float:
    """Voxel attack success rate: fraction of voxels whose predicted class changed.

    Args:
        pred_clean: class indices predicted on the clean volume (any shape).
        pred_adv: class indices predicted on the adversarial volume, same shape.

    Returns:
        A fraction in [0, 1].

    Raises:
        ValueError: shapes differ or the volumes are empty.
    """
    a, b = _as_tensor(pred_clean), _as_tensor(pred_adv)
    if a.shape != b.shape:
        raise ValueError(f"pred_clean and pred_adv must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("cannot compute a success rate on empty predictions")
    return (a != b.to(a.device)).sum().item() / a.numel()


# ---------------------------------------------------------------------------------------
# image similarity


def _image_pair(clean: ArrayLike, adv: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    clean_t = _volume(clean, "clean").float()
    adv_t = _volume(adv, "adv").float().to(clean_t.device)
    if clean_t.shape != adv_t.shape:
        raise ValueError(f"clean and adv must have the same shape, got {tuple(clean_t.shape)} and {tuple(adv_t.shape)}")
    return clean_t, adv_t


def ssim3d(clean: ArrayLike, adv: ArrayLike, data_range: float = 1.0, win_size: Optional[int] = None) -> float:
    """3D SSIM (``pytorch_msssim.ssim`` with a Gaussian window, sigma 1.5) of two volumes.

    Args:
        clean: ``[H, W, D]`` (or with leading singleton dims) image in ``[0, data_range]``.
        adv: same shape.
        data_range: value range of the images (1 for our [0, 1] images).
        win_size: odd window side; default ``min(11, largest odd number <= smallest side)``,
            so small volumes are filtered along every axis.

    Returns:
        Mean SSIM (1 for identical volumes).

    Raises:
        ValueError: shapes differ, or ``win_size`` is even or below 1.
    """
    clean_t, adv_t = _image_pair(clean, adv)
    if win_size is None:
        smallest = min(clean_t.shape)
        win_size = min(11, smallest if smallest % 2 == 1 else smallest - 1)
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd number, got {win_size}")
    value = _ms_ssim(clean_t[None, None], adv_t[None, None], data_range=data_range, size_average=True, win_size=win_size)
    return float(value)


def psnr(clean: ArrayLike, adv: ArrayLike, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range² / MSE)`` in dB; ``inf`` if identical.

    The reference computes it on x255 values with ``data_range=255``, which is the same number.
    """
    clean_t, adv_t = _image_pair(clean, adv)
    mse = torch.mean((clean_t.double() - adv_t.double()) ** 2).item()
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(data_range**2 / mse)


# ---------------------------------------------------------------------------------------
# LPIPS similarity

ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"
"""torchvision's ``AlexNet_Weights.IMAGENET1K_V1`` file, the backbone of ``lpips.LPIPS(net="alex")``."""

_ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_WEIGHTS_FILE}"

_warned_unavailable = False


def alexnet_weights_path() -> str:
    """Where torchvision keeps the AlexNet weights: ``<torch.hub.get_dir()>/checkpoints/<file>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", ALEXNET_WEIGHTS_FILE)


def build_lpips_alex() -> nn.Module:
    """``lpips.LPIPS(net="alex")`` built without any download.

    The LPIPS linear layers ship inside the ``lpips`` package; the AlexNet backbone is
    created randomly initialised (``pnet_rand=True``) and then filled from the weights file
    already in the torch hub cache (:func:`alexnet_weights_path`).

    Raises:
        FileNotFoundError: the AlexNet weights file is not in the cache.
        RuntimeError: the file does not hold AlexNet's ``features`` weights.
    """
    path = alexnet_weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    import lpips  # heavy: imported on first use only

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained is deprecated"
        net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    alexnet_state = torch.load(path, map_location="cpu", weights_only=True)
    # lpips keeps torchvision's features[i] as slice{k}.{i}: map "features.{i}.*" onto them
    backbone_state = {}
    for key in net.net.state_dict():
        _, index, param = key.split(".")
        source = f"features.{index}.{param}"
        if source not in alexnet_state:
            raise RuntimeError(f"{path} lacks {source}; expected torchvision's AlexNet weights")
        backbone_state[key] = alexnet_state[source]
    net.net.load_state_dict(backbone_state, strict=True)
    return net.eval()


class LPIPSSimilarity:
    """``1 - LPIPS_alex`` averaged over the axial slices of a volume (the paper's "LPIPS↑").

    Each slice along the last axis is fed as a 1-channel image scaled from [0, 1] to
    [-1, 1] (LPIPS' input scaling layer broadcasts it over the three colour channels),
    as the reference does. Slices go through the network ``batch_size`` at a time; the
    mean over all slices is the same as the reference's single batch.

    The network is built on first use, on the device of the input. Nothing is downloaded:
    if the AlexNet weights are not in the torch hub cache, one warning per process says
    how to enable LPIPS and every call returns ``None``.

    Args:
        builder: returns the LPIPS network (``net(x0, x1) -> [B, 1, 1, 1]`` distances);
            default :func:`build_lpips_alex`.
        batch_size: slices per forward pass.
    """

    def __init__(self, builder: Optional[Callable[[], nn.Module]] = None, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._builder = builder
        self.batch_size = int(batch_size)
        self._net: Optional[nn.Module] = None
        self._failed = False

    @property
    def available(self) -> bool:
        """Whether LPIPS can be computed (a builder was given or the AlexNet weights are cached)."""
        if self._net is not None:
            return True
        if self._failed:
            return False
        return self._builder is not None or os.path.isfile(alexnet_weights_path())

    def _network(self) -> Optional[nn.Module]:
        if self._net is None and not self._failed:
            try:
                self._net = (self._builder or build_lpips_alex)()
            except (FileNotFoundError, RuntimeError) as err:
                self._failed = True
                _warn_unavailable(err)
        return self._net

    @torch.no_grad()
    def __call__(self, clean: ArrayLike, adv: ArrayLike) -> Optional[float]:
        """Similarity of two volumes.

        Args:
            clean: ``[H, W, D]`` (or with leading singleton dims) image in [0, 1].
            adv: same shape.

        Returns:
            Mean over the ``D`` axial slices of ``1 - LPIPS``, a fraction (1 for identical
            volumes); ``None`` when LPIPS is unavailable.

        Raises:
            ValueError: shapes differ.
        """
        clean_t, adv_t = _image_pair(clean, adv)
        net = self._network()
        if net is None:
            return None
        net = net.to(clean_t.device)
        slices_clean = clean_t.permute(2, 0, 1).unsqueeze(1) * 2 - 1  # [D, 1, H, W] in [-1, 1]
        slices_adv = adv_t.permute(2, 0, 1).unsqueeze(1) * 2 - 1  # [D, 1, H, W]
        total = 0.0
        for start in range(0, slices_clean.shape[0], self.batch_size):
            stop = start + self.batch_size
            distances = net(slices_clean[start:stop], slices_adv[start:stop])  # [b, 1, 1, 1]
            total += distances.double().sum().item()
        return 1.0 - total / slices_clean.shape[0]


def _warn_unavailable(err: Exception) -> None:
    global _warned_unavailable
    if _warned_unavailable:
        return
    _warned_unavailable = True
    path = alexnet_weights_path()
    reason = "is not in the torch hub cache" if isinstance(err, FileNotFoundError) else f"cannot be used ({err})"
    logger.warning(
        "LPIPS similarity is reported as missing: the AlexNet weights file %s %s and nothing is downloaded. "
        "To enable LPIPS, put %s (from %s) in %s",
        path,
        reason,
        ALEXNET_WEIGHTS_FILE,
        _ALEXNET_URL,
        os.path.dirname(path),
    )


# ---------------------------------------------------------------------------------------
# one case


def hd95_worst_case(hd95: torch.Tensor, pred: ArrayLike, label: ArrayLike, num_classes: int,
                    spacing: Optional[Union[float, Sequence[float]]] = None) -> torch.Tensor:
    """HD95 per class with an erased organ counted as the worst distance.

    :func:`hd95_per_class` gives NaN for a class the ground truth holds but the prediction
    lacks, and the mean over classes skips it, so erasing an organ lowers the mean HD95.
    Here such a class counts as the volume's diagonal (the largest distance two voxels of
    the volume can have, in voxels or, with ``spacing``, in mm). Classes absent from the
    ground truth stay NaN.

    Args:
        hd95: ``[N]`` from :func:`hd95_per_class`.
        pred: predicted class indices, the shapes :func:`hd95_per_class` takes.
        label: ground-truth class indices, same shape.
        num_classes: number of classes ``N``.
        spacing: voxel size per axis (or one number), as given to :func:`hd95_per_class`.

    Returns:
        ``[N]`` float tensor on the CPU.
    """
    pred_t, label_t = _label_pair(pred, label, num_classes)
    in_label = torch.bincount(label_t.flatten(), minlength=num_classes).cpu() > 0
    in_pred = torch.bincount(pred_t.flatten(), minlength=num_classes).cpu() > 0
    sides = torch.tensor(pred_t.shape[-3:], dtype=torch.float64)
    if spacing is not None:
        sides = sides * torch.as_tensor(spacing, dtype=torch.float64)
    diagonal = float(sides.square().sum().sqrt())
    return torch.where(in_label & ~in_pred, torch.full_like(hd95, diagonal), hd95.cpu())


def compute_case_metrics(
    image_clean: ArrayLike,
    image_adv: ArrayLike,
    label: ArrayLike,
    pred_clean: ArrayLike,
    pred_adv: ArrayLike,
    num_classes: int,
    lpips: Optional[LPIPSSimilarity] = None,
    spacing: Optional[Union[float, Sequence[float]]] = None,
) -> dict:
    """All per-case numbers of a clean-vs-adversarial evaluation, as plain Python values.

    Args:
        image_clean: clean volume ``[H, W, D]`` (or with leading singleton dims) in [0, 1].
        image_adv: adversarial volume, same shape.
        label: ground-truth class indices, same shape.
        pred_clean: class indices predicted on the clean volume.
        pred_adv: class indices predicted on the adversarial volume.
        num_classes: number of classes (background included).
        lpips: LPIPS similarity to compute, or ``None`` to skip it.
        spacing: HD95 voxel size (``None``: voxels, as the reference).

    Returns:
        ``dice_clean``/``dice_adv``/``hd95_clean``/``hd95_adv`` (per-class lists, NaN where
        undefined) with ``*_mean`` (NaN-skipping means over classes, background included as
        in the release), ``dice_*_fg_mean`` (foreground classes only, as nnU-Net reports),
        ``hd95_*_worst_mean`` (an organ missing from the prediction counted as the volume's
        diagonal, :func:`hd95_worst_case`), ``success_rate``,
        ``ssim``, ``psnr`` and ``lpips_similarity`` (``None`` if not computed). Dice,
        success rate, SSIM and LPIPS similarity are fractions.
    """
    dice_clean = dice_per_class(pred_clean, label, num_classes)
    dice_adv = dice_per_class(pred_adv, label, num_classes)
    hd95_clean = hd95_per_class(pred_clean, label, num_classes, spacing=spacing)
    hd95_adv = hd95_per_class(pred_adv, label, num_classes, spacing=spacing)
    return {
        "dice_clean": dice_clean.tolist(),
        "dice_clean_mean": class_mean(dice_clean),
        "dice_clean_fg_mean": class_mean(dice_clean[1:]),
        "dice_adv": dice_adv.tolist(),
        "dice_adv_mean": class_mean(dice_adv),
        "dice_adv_fg_mean": class_mean(dice_adv[1:]),
        "hd95_clean": hd95_clean.tolist(),
        "hd95_clean_mean": class_mean(hd95_clean),
        "hd95_clean_worst_mean": class_mean(hd95_worst_case(hd95_clean, pred_clean, label, num_classes, spacing)),
        "hd95_adv": hd95_adv.tolist(),
        "hd95_adv_mean": class_mean(hd95_adv),
        "hd95_adv_worst_mean": class_mean(hd95_worst_case(hd95_adv, pred_adv, label, num_classes, spacing)),
        "success_rate": success_rate(pred_clean, pred_adv),
        "ssim": ssim3d(image_clean, image_adv),
        "psnr": psnr(image_clean, image_adv),
        "lpips_similarity": lpips(image_clean, image_adv) if lpips is not None else None,
    }
