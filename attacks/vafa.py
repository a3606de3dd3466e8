"""VAFA: volumetric adversarial frequency attack (the paper's Eq. 1-2, Algorithm 1, and its code release)."""

from __future__ import annotations

import contextlib
import logging
import math
import operator
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from utils.options import Option

from .base import Attack, LossFn, fooled_fraction, predict
from .frequency import (
    block_dct,
    block_idct,
    clip_to_unit,
    count_unspanned_slices,
    normalize_slices,
    quantize_dequantize,
    renormalisation_share,
    split_blocks,
)
from .options import STEPS, TARGETED
from .ssim import BlockSSIM

logger = logging.getLogger(__name__)

ALPHA_START = 0.1  # softness of the differentiable rounding at step 0
ALPHA_END = 1e-20  # value alpha is annealed towards over ``steps`` steps
Q_INITS = ("max", "one")
NORMALISE_MODES = ("slice", "clip")  # the code release's per-slice min-max, the paper's Eq. 1 clip

Q_MAX = Option("q_max", float, 20, "VAFA: upper bound of the quantisation tables", minimum=0.0)
Q_MIN = Option("q_min", float, 5, "VAFA: lower bound of the quantisation tables (release: 5)", minimum=0.0)
Q_INIT = Option("q_init", str, "max", "VAFA: start tables at q_max (release) or 1 (paper's Algorithm 1: pair with "
                "--q_min 1, the start is clipped to [q_min, q_max])", choices=Q_INITS)
USE_SSIM_LOSS = Option("use_ssim_loss", bool, False, "VAFA-3D: add the block-wise SSIM term")
NORMALISE = Option("vafa_normalise", str, "slice", "VAFA: map each step's inverse DCT back to [0,1] by per-axial-"
                   "slice min-max (slice, the release) or by clamp(X'/255, 0, 1) (clip, the paper's Eq. 1)",
                   choices=NORMALISE_MODES, keyword="normalise")
SHARE_WARNING = 0.5
"""A case whose renormalisation share exceeds this is named in a warning."""
BLOCK_SIZE = Option("block_size", int, [8, 8, 8], "VAFA DCT block: 3 sides (vafa-3d) or 2 (vafa-2d)", nargs="+",
                    minimum=1)


class VAFA(Attack):
    """Learn one quantisation table per DCT block so that the dequantised image fools the model.

    Per call, with ``T = steps`` (the reference's numerics):

    1. ``q`` starts at ``q_max`` (``q_init="max"``, the reference) or 1
       (``q_init="one"``), clamped into ``[q_min, q_max]``, and stays there;
    2. each step: block DCT of ``255 X - 128``, ``phi_diff(coeffs / q, alpha) * q``,
       inverse block DCT, ``+ 128`` -> ``R`` (the 0..255 scale), then back to [0, 1]:
       per-axial-slice min-max normalisation (``normalise="slice"``) or
       ``clamp(R / 255, 0, 1)`` (``normalise="clip"``) -> ``X'``;
    3. minimise ``-loss(M(X'), Y)`` (targeted: ``+loss(M(X'), Y_target)``), plus
       ``1 - SSIM(blocks(X), blocks(X'))`` with ``use_ssim_loss`` (3D only);
    4. ``q <- clamp(q - sign(grad_q), q_min, q_max)``; ``alpha`` moves from 0.1
       towards 1e-20 by ``(1e-20 - 0.1) / T`` (accumulated in float32);
    5. stop early once every voxel is fooled.

    The returned image is ``clamp(X', 0, 1)`` of the last forward pass (built from
    the tables before their last update, as in the reference). With three block
    sides the blocks are 3D; with two, each axial slice ``[:, :, :, :, d]`` is cut
    into 2D blocks (VAFA-2D). The paper's Algorithm 1 corresponds to
    ``q_init="one", q_min=1`` (with the default ``q_min=5``, ``q_init="one"``
    starts at 5) together with ``normalise="clip"``.

    Where a slice of ``R`` does not span [0, 255] (MRI, tiles away from bone) the
    release's min-max renormalisation stretches its intensities, a change often
    much larger than the quantisation; :attr:`renormalisation_parts` measures it.

    All per-call state (``q``, ``alpha``) is rebuilt in :meth:`forward`, so one
    object serves any batch or patch size and repeated calls are independent.

    Args:
        model: segmentation network.
        loss_fn: ``loss_fn(logits, labels) -> scalar`` (Dice-CE).
        q_max: upper bound (and, with ``q_init="max"``, start) of the tables.
        q_min: lower bound of the tables, ``0 < q_min <= q_max``.
        q_init: ``"max"`` or ``"one"``, the starting value of the tables.
        steps: number of steps ``T >= 1``.
        block_size: ``(bh, bw, bd)`` for 3D blocks or ``(bh, bw)`` for per-slice 2D blocks.
        use_ssim_loss: add the block-wise SSIM term (3D only; ignored with a warning in 2D).
        targeted: labels passed to the call are target labels.
        normalise: how each step maps ``R`` back to [0, 1]. ``"slice"`` (default,
            the code release, its numbers bit for bit): min-max normalisation of
            every axial slice, :func:`~attacks.frequency.normalize_slices`.
            ``"clip"`` (the paper's Eq. 1 and Algorithm 1): ``clamp(R / 255, 0, 1)``,
            :func:`~attacks.frequency.clip_to_unit`; gradients pass the clamp as
            torch gives them (zero on clipped voxels).

    Attributes:
        q_tables: after a call, the final tables, ``[B, C, n_blocks, bh, bw, bd]``
            (3D) or ``[B, C, D, n_blocks, bh, bw]`` (2D).
        success_rate: fraction of voxels fooled at each step that ran.
        predictions: ``[B, 1, H, W, D]`` argmax of the last forward pass.
        renormalisation_parts: after a call, what the slice renormalisation
            contributes, from the last forward pass's ``R`` (in either mode), per
            sample: a dict of three ``[B]`` float64 CPU tensors of sums of squares
            over ``(C, H, W, D)``, with ``slice(R) = clamp(normalize_slices(R), 0, 1)``
            (what ``"slice"`` returns), ``clip(R) = clip_to_unit(R)`` (what ``"clip"``
            returns) and ``X`` the clean images:
            ``"diff_sq"``: ``sum((slice(R) - clip(R))^2)``;
            ``"pert_sq"``: ``sum((slice(R) - X)^2)``;
            ``"clip_pert_sq"``: ``sum((clip(R) - X)^2)``.
            Sums of squares add up across tiles of a volume;
            :func:`~attacks.frequency.renormalisation_share` turns them into
            ``||slice(R) - clip(R)|| / ||slice(R) - X||``.

    Raises:
        ValueError: inconsistent arguments (message names expected and actual).
    """

    options = (Q_MAX, Q_MIN, Q_INIT, STEPS, BLOCK_SIZE, USE_SSIM_LOSS, TARGETED, NORMALISE)

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        q_max: float = 20.0,
        q_min: float = 5.0,
        q_init: str = "max",
        steps: int = 20,
        block_size: Sequence[int] = (8, 8, 8),
        use_ssim_loss: bool = False,
        targeted: bool = False,
        normalise: str = "slice",
    ):
        super().__init__(model, loss_fn, targeted)
        block_size = _block_size(block_size)
        if not (math.isfinite(q_min) and math.isfinite(q_max)):
            raise ValueError(f"q_min and q_max must be finite numbers, got q_min={q_min}, q_max={q_max}")
        if q_min <= 0:
            raise ValueError(f"q_min must be > 0, got {q_min}")
        if q_min > q_max:
            raise ValueError(f"q_min must be <= q_max, got q_min={q_min} > q_max={q_max}")
        if q_init not in Q_INITS:
            raise ValueError(f"q_init must be one of {Q_INITS}, got {q_init!r}")
        if normalise not in NORMALISE_MODES:
            raise ValueError(f"normalise must be one of {NORMALISE_MODES}, got {normalise!r}")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps}")
        self.q_max = float(q_max)
        self.q_min = float(q_min)
        self.q_init = q_init
        self.steps = int(steps)
        self.block_size = block_size
        self.use_ssim_loss = bool(use_ssim_loss)
        self.normalise = normalise
        if self.use_ssim_loss and not self.is_3d:
            logger.warning("VAFA-2D has no SSIM term; use_ssim_loss=True is ignored")
        self.q_tables: Optional[torch.Tensor] = None
        self.predictions: Optional[torch.Tensor] = None
        self.renormalisation_parts: Optional[Dict[str, torch.Tensor]] = None

    @property
    def is_3d(self) -> bool:
        """True for 3D blocks, False for per-slice 2D blocks."""
        return len(self.block_size) == 3

    @property
    def transform_block(self) -> tuple:
        """Block of the DCT on ``[B, C, H, W, D]``: ``(bh, bw, bd)``, or ``(bh, bw, 1)`` for per-slice 2D blocks."""
        return self.block_size if self.is_3d else (*self.block_size, 1)

    def check_tile(self, tile_shape: Sequence[int]) -> None:
        """Refuse a tile ``(H, W, D)`` the blocks do not divide (3D; 2D: ``(H, W)``).

        Raises:
            ValueError: names the shape and the block.
        """
        spatial = tuple(int(s) for s in tile_shape)
        if any(s % b for s, b in zip(spatial, self.transform_block)):
            raise ValueError(f"spatial shape {spatial} is not divisible by block_size {self.block_size}; "
                             "choose a block that divides the ROI (--roi_x/--roi_y/--roi_z)")

    def _tables(self, q: torch.Tensor) -> torch.Tensor:
        """Tables kept as ``[B, C, H, W, D]`` -> ``[B, C, n_blocks, bh, bw, bd]`` or ``[B, C, D, n_blocks, bh, bw]``."""
        if self.is_3d:
            return split_blocks(q, self.block_size)
        return split_blocks(q.permute(0, 1, 4, 2, 3), self.block_size)  # [B, C, D, H, W] -> 2D blocks per slice

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Run the attack.

        Args:
            images: ``[B, C, H, W, D]`` in [0, 1].
            labels: ``[B, 1, H, W, D]`` (target labels when ``targeted``).

        Returns:
            ``[B, C, H, W, D]`` adversarial images in [0, 1].

        Raises:
            ValueError: ``(H, W, D)`` (3D) or ``(H, W)`` (2D) not divisible by ``block_size``.
        """
        self.check_tile(images.shape[2:])
        images = images.contiguous()
        device = images.device

        # Everything stays in the [B, C, H, W, D] layout: the tables hold one entry per
        # voxel (its block's coefficient at that position) and the clean coefficients,
        # which do not depend on q, are transformed once per call.
        # The transforms run in the input dtype even under a caller's autocast (half
        # precision would wreck the quantisation); only the model follows autocast.
        with _autocast_off(device):
            coeffs = block_dct(images * 255 - 128, self.transform_block)  # [B, C, H, W, D]
            ssim_to_clean = BlockSSIM(images, self.block_size) if self.use_ssim_loss and self.is_3d else None
        q_start = self.q_max if self.q_init == "max" else 1.0
        q = torch.full_like(coeffs, q_start).clamp_(self.q_min, self.q_max)  # [B, C, H, W, D]
        # alpha stays a float32 tensor and accumulates in float32, as in the reference.
        alpha = torch.tensor(ALPHA_START, dtype=torch.float32, device=device)
        alpha_step = torch.tensor((ALPHA_END - ALPHA_START) / self.steps, dtype=torch.float32, device=device)

        self.success_rate = []
        for step in range(self.steps):
            q.requires_grad_(True)
            with _autocast_off(device):
                restored = block_idct(quantize_dequantize(coeffs, q, alpha), self.transform_block) + 128
                adv = self._to_unit(restored)  # [B, C, H, W, D]
            logits = self.model(adv)  # [B, N, H, W, D]
            loss = -self.objective(logits, labels)
            if ssim_to_clean is not None:
                with _autocast_off(device):
                    loss = loss + 1 - ssim_to_clean(adv)
            (grad,) = torch.autograd.grad(loss, q)
            q = q.detach().sub_(grad.sign_()).clamp_(self.q_min, self.q_max)  # the graph is gone: update in place
            alpha += alpha_step

            pred = predict(logits.detach())  # [B, 1, H, W, D]
            rate = fooled_fraction(pred, labels, self.targeted).item()
            self.success_rate.append(rate)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("VAFA step %d/%d: loss %.5f, success rate %.4f", step + 1, self.steps, loss.item(), rate)
            if rate >= 1:
                logger.info("VAFA: every voxel fooled after step %d of %d; stopping", step + 1, self.steps)
                break

        self.q_tables = self._tables(q)
        self.predictions = pred
        with torch.no_grad(), _autocast_off(device):
            self.renormalisation_parts = _renormalisation_parts(restored.detach(), images)
        return torch.clamp(adv.detach(), 0, 1)

    @classmethod
    def format_folder_name(cls, values) -> str:
        """The release's folder name; settings the release did not vary add a part only when they
        differ from its values: ``_q_min_<q_min>`` (release 5), ``_q_init_<q_init>`` (release
        ``max``), then ``_clip`` for ``--vafa_normalise clip``."""
        name = super().format_folder_name(values)
        q_min = values.get("q_min", Q_MIN.default)
        if q_min != Q_MIN.default:
            name += f"_q_min_{q_min}"
        if values.get("q_init", Q_INIT.default) != Q_INIT.default:
            name += f"_q_init_{values['q_init']}"
        mode = values.get("vafa_normalise", NORMALISE.default)
        return name + ("" if mode == NORMALISE.default else f"_{mode}")

    @classmethod
    def summary(cls, values) -> str:
        mode = values.get("vafa_normalise", "slice")
        return super().summary(values) + ("" if mode == "slice" else f", normalise={mode}")

    def describe_input(self, image: torch.Tensor) -> Optional[str]:
        """With the release's per-slice min-max: how many whole axial slices of the clean volume
        do not span [0, 1]. The min-max acts on each ROI tile's slices, which can fall short of
        [0, 1] where the whole slice does not, so the count is a lower bound. ``None`` with clip."""
        if self.normalise != "slice":
            return None
        count = int(count_unspanned_slices(image).sum())
        slices = image.shape[0] * image.shape[1] * image.shape[-1]
        return (f"{count} of {slices} whole axial slices do not span [0, 1] (min > 0.01 or max < 0.99); the "
                "per-slice min-max acts on each ROI tile's part of a slice, which may span less")

    def call_parts(self):
        parts = self.renormalisation_parts
        return None if parts is None else {key: value.sum() for key, value in parts.items()}

    def case_metrics(self, sums) -> dict:
        """``renormalisation_share``: ||slice(X') - clip(X')|| / ||slice(X') - X|| over the volume's tiles.
        A clip run renormalises nothing: the same ratio, what the release's form would have
        made, is named ``renormalisation_share_if_slice`` there."""
        if "diff_sq" not in sums:
            return {}
        key = "renormalisation_share" if self.normalise == "slice" else "renormalisation_share_if_slice"
        return {key: renormalisation_share(float(sums["diff_sq"]), float(sums["pert_sq"]))}

    @classmethod
    def summary_lines(cls, overall) -> list:
        lines = []
        if overall.get("renormalisation_share") is not None:
            lines.append(f"VAFA renormalisation share {overall['renormalisation_share']:.3f} "
                         "(share of the perturbation that the release's per-slice min-max makes)")
        if overall.get("renormalisation_share_if_slice") is not None:
            lines.append("VAFA renormalisation share had the release's per-slice min-max been used "
                         f"{overall['renormalisation_share_if_slice']:.3f} (this run clipped: nothing was renormalised)")
        return lines

    @classmethod
    def review(cls, per_case) -> Optional[str]:
        hit = sorted(name for name, case in per_case.items()
                     if (case.get("renormalisation_share") or 0) > SHARE_WARNING)
        if not hit:
            return None
        return (f"in {len(hit)} case(s) ({', '.join(hit)}) more than half of VAFA's perturbation comes from the "
                "release's per-slice min-max renormalisation, not from the quantisation (it stretches each axial "
                "slice of each ROI tile whose values do not span [0, 1]); consider --vafa_normalise clip, the "
                "paper's formulation")

    def _to_unit(self, restored: torch.Tensor) -> torch.Tensor:
        """``R`` ``[B, C, H, W, D]`` on the 0..255 scale -> ``X'`` in [0, 1], by ``normalise``."""
        if self.normalise == "clip":
            return clip_to_unit(restored)
        return normalize_slices(restored)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(q_max={self.q_max}, q_min={self.q_min}, q_init={self.q_init!r}, "
            f"steps={self.steps}, block_size={self.block_size}, use_ssim_loss={self.use_ssim_loss}, "
            f"targeted={self.targeted}, normalise={self.normalise!r})"
        )


def _renormalisation_parts(restored: torch.Tensor, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-sample sums of squares of :attr:`VAFA.renormalisation_parts` (see there).

    Args:
        restored: ``[B, C, H, W, D]`` un-normalised inverse DCT ``R`` (0..255 scale).
        images: ``[B, C, H, W, D]`` clean images in [0, 1].

    Returns:
        ``{"diff_sq", "pert_sq", "clip_pert_sq"}`` -> ``[B]`` float64 CPU tensors.
    """
    sliced = torch.clamp(normalize_slices(restored), 0, 1).double()  # as "slice" returns it
    clipped = clip_to_unit(restored).double()  # as "clip" returns it
    clean = images.double()

    def sum_sq(x: torch.Tensor) -> torch.Tensor:
        return x.square().sum(dim=(1, 2, 3, 4)).cpu()  # [B]

    return {
        "diff_sq": sum_sq(sliced - clipped),
        "pert_sq": sum_sq(sliced - clean),
        "clip_pert_sq": sum_sq(clipped - clean),
    }


def _autocast_off(device: torch.device):
    """Context that disables autocast on ``device`` (a no-op where autocast does not exist)."""
    is_available = getattr(torch.amp, "is_autocast_available", None)
    if is_available is not None and not is_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def _block_size(block_size: Sequence[int]) -> tuple:
    """``block_size`` as a tuple of 2 or 3 positive Python ints."""
    try:
        sides = tuple(operator.index(b) for b in block_size)
    except TypeError:
        raise ValueError(f"block_size must be 2 or 3 positive ints, got {block_size!r}") from None
    if len(sides) not in (2, 3) or any(b < 1 for b in sides):
        raise ValueError(f"block_size must be 2 or 3 positive ints, got {sides}")
    return sides


class VAFA3D(VAFA):
    """VAFA with 3D blocks (registry name ``vafa-3d``); ``block_size`` must have three sides."""

    name = "vafa-3d"
    folder_format = "vafa_q_max_{q_max}_i_{steps}_3d_dct_{block}_use_ssim_loss_{use_ssim_loss}"
    summary_format = ("VAFA-3D: q_max={q_max}, q_min={q_min}, steps={steps}, block_size={block_size}, "
                      "use_ssim_loss={use_ssim_loss}, targeted={targeted}")
    presets = {"q_max": 20, "block_size": (8, 8, 8), "use_ssim_loss": True}  # the paper's Table 1
    block_sides = 3

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, block_size: Sequence[int] = (8, 8, 8), **kwargs):
        if len(tuple(block_size)) != 3:
            raise ValueError(f"vafa-3d needs a block_size with 3 sides (bh, bw, bd), got {tuple(block_size)}")
        super().__init__(model, loss_fn, block_size=block_size, **kwargs)


class VAFA2D(VAFA):
    """VAFA on axial slices with 2D blocks (registry name ``vafa-2d``); ``block_size`` must have two sides."""

    name = "vafa-2d"
    folder_format = "vafa_q_max_{q_max}_i_{steps}_2d_dct_{block}"
    summary_format = "VAFA-2D: q_max={q_max}, q_min={q_min}, steps={steps}, block_size={block_size}, targeted={targeted}"
    presets = {"q_max": 20, "block_size": (8, 8)}  # the paper's Table 1
    block_sides = 2

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, block_size: Sequence[int] = (8, 8), **kwargs):
        if len(tuple(block_size)) != 2:
            raise ValueError(f"vafa-2d needs a block_size with 2 sides (bh, bw), got {tuple(block_size)}")
        super().__init__(model, loss_fn, block_size=block_size, **kwargs)
