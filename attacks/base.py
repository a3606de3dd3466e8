"""Shared machinery of all attacks: one call contract, model mode handling, gradients."""

from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from utils.options import Option, canonical_values, constructor_kwargs, integral_float_spellings

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Attack:
    """Base class: ``adv = attack(images, labels)``.

    Subclasses implement :meth:`forward`. Calling the attack

    * checks the shapes,
    * switches the model (every submodule) to eval mode and restores each
      submodule's previous mode afterwards, even on error,
    * runs :meth:`forward` with gradients enabled (also when called under
      ``torch.no_grad()``),
    * returns a detached tensor.

    Gradients are taken with ``torch.autograd.grad`` with respect to the input
    (or the q-tables) only, so the model's parameters never receive a ``.grad``
    and their ``requires_grad`` flags are left alone. Device and dtype follow the
    inputs.

    Args:
        model: segmentation network, ``[B, C, H, W, D] -> [B, N, H, W, D]`` logits.
        loss_fn: ``loss_fn(logits, labels) -> scalar``, e.g. the Dice-CE of
            ``training.losses.build_dice_ce``.
        targeted: when True the labels passed to the call are target labels and
            the attack lowers the loss towards them; otherwise it raises the loss
            on the true labels.

    Attributes:
        success_rate: per-step fraction of voxels fooled (predicted class differs
            from the labels, or equals the target labels when targeted), filled by
            attacks that compute logits anyway; empty otherwise.

    Class attributes (each registered attack sets them; the command line reads them):
        name: registry name, the ``--attack_name`` value.
        options: the :class:`utils.options.Option` s the constructor takes after
            ``model`` and ``loss_fn`` (values as typed; ``scale`` converts them).
        folder_format: ``str.format`` pattern of the run-folder name over the option
            values as typed, plus ``block`` (block sides joined by ``x``).
        summary_format: the same for the one-line description in logs and tables.
        presets: the paper's setting of the attack (option values as typed, e.g. ``{"eps": 4}``):
            what sweeps and tables start from before the user's overrides.
        block_sides: sides of the attack's DCT blocks (3 for 3D blocks, 2 per slice, 0 without
            blocks): a sweep's ``block_size=8`` means a cube or a square by this.
    """

    name: ClassVar[str] = ""
    options: ClassVar[Tuple[Option, ...]] = ()
    folder_format: ClassVar[str] = ""
    summary_format: ClassVar[str] = ""
    presets: ClassVar[Mapping[str, Any]] = {}
    block_sides: ClassVar[int] = 0

    def __init__(self, model: nn.Module, loss_fn: Optional[LossFn], targeted: bool = False):
        self.model = model
        self.loss_fn = loss_fn
        self.targeted = bool(targeted)
        self.success_rate: List[float] = []

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Attack a batch.

        Args:
            images: ``[B, C, H, W, D]`` floating tensor in [0, 1].
            labels: ``[B, 1, H, W, D]`` class indices (true labels, or target labels
                when ``targeted``).

        Returns:
            ``[B, C, H, W, D]`` adversarial images in [0, 1], detached.

        Raises:
            ValueError: images or labels with the wrong shape.
        """
        _check_inputs(images, labels)
        images, labels = _autograd_ready(images), _autograd_ready(labels)
        modes = [(module, module.training) for module in self.model.modules()] if self.model is not None else []
        if self.model is not None:
            self.model.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                adv = self.forward(images, labels)
        finally:
            for module, training in modes:
                module.training = training
        return adv.detach()

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Build adversarial images; see :meth:`__call__` for shapes."""
        raise NotImplementedError

    def objective(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The quantity the attack increases: the loss, or minus the loss when targeted."""
        loss = self.loss_fn(logits, labels)
        return -loss if self.targeted else loss

    def input_gradient(self, images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Gradient of :meth:`objective` with respect to the images.

        Args:
            images: ``[B, C, H, W, D]``.
            labels: ``[B, 1, H, W, D]``.

        Returns:
            ``(grad [B, C, H, W, D], logits [B, N, H, W, D])``, both detached.
        """
        images = images.detach().requires_grad_(True)
        logits = self.model(images)
        (grad,) = torch.autograd.grad(self.objective(logits, labels), images)
        return grad, logits.detach()

    def fooled_fraction(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Fraction of voxels fooled, as a 0-dim tensor (no device sync).

        Untargeted: ``argmax(logits) != labels``; targeted: ``argmax(logits) == labels``.
        """
        return fooled_fraction(predict(logits), labels, self.targeted)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(targeted={self.targeted})"

    # ------------------------------------------------------------------ identity

    @classmethod
    def from_values(cls, model: Optional[nn.Module], loss_fn: Optional[LossFn], values: Mapping[str, Any]) -> "Attack":
        """Build from option values as typed (``--eps 4``), converting each by its option.

        Raises:
            ValueError: a value the attack refuses (the message names it).
        """
        return cls(model, loss_fn, **constructor_kwargs(cls.options, values))

    @classmethod
    def folder_name(cls, values: Mapping[str, Any]) -> str:
        """The run folder's name for these option values: the release's names, one spelling per
        value (``--eps 4`` and the default both give ``eps_4.0``, as the release's typed flags did)."""
        return cls.format_folder_name(canonical_values(cls.options, values))

    @classmethod
    def folder_names(cls, values: Mapping[str, Any]) -> list:
        """The canonical :meth:`folder_name` first, then the other spellings older runs used for
        the same values (the release wrote an untyped default ``--eps`` as ``eps_4``)."""
        canonical = canonical_values(cls.options, values)
        names = [cls.format_folder_name(canonical)]
        for variant in integral_float_spellings(cls.options, canonical):
            name = cls.format_folder_name(variant)
            if name not in names:
                names.append(name)
        return names

    @classmethod
    def format_folder_name(cls, values: Mapping[str, Any]) -> str:
        """The folder name of values already spelled as wanted (attacks with extra name parts override this)."""
        return cls.folder_format.format(**_format_values(values))

    @classmethod
    def summary(cls, values: Mapping[str, Any]) -> str:
        """One line describing the attack with these option values."""
        return cls.summary_format.format(**_format_values(canonical_values(cls.options, values)))

    def check_tile(self, tile_shape: Sequence[int]) -> None:
        """Refuse a tile shape ``(H, W, D)`` the attack cannot work on (``ValueError``); any by default."""

    # ------------------------------------------------------------------ what an attack adds to the reports
    # A whole volume is attacked tile batch by tile batch; after each call the evaluation adds up
    # ``call_parts()`` over the volume and reports ``case_metrics(sums)`` next to Dice, then shows
    # ``review(per_case)`` once as a warning. Attacks with nothing to add keep these defaults.

    def describe_input(self, image: torch.Tensor) -> Optional[str]:
        """A line to log about a clean volume ``[1, C, H, W, D]`` before it is attacked, or ``None``."""
        return None

    def call_parts(self) -> Optional[Mapping[str, torch.Tensor]]:
        """Additive quantities (sums over voxels) of the last call, or ``None``."""
        return None

    def call_candidates(self) -> Optional[Mapping[str, torch.Tensor]]:
        """Other results of the last call worth comparing on the whole volume (an ensemble's
        members: ``{name: adv [B, C, H, W, D]}``), or ``None``. The evaluation stitches each
        into its own volume and keeps, per volume, the one with the lowest Dice."""
        return None

    @classmethod
    def case_metrics(cls, sums: Mapping[str, float]) -> dict:
        """Per-case report entries from the volume's summed :meth:`call_parts`."""
        return {}

    @classmethod
    def review(cls, per_case: Mapping[str, Mapping]) -> Optional[str]:
        """One warning about the whole run's cases, or ``None``."""
        return None

    @classmethod
    def summary_lines(cls, overall: Mapping[str, Any]) -> list:
        """Lines of the printed summary about this attack's own entries of the run's means
        (those :meth:`case_metrics` made)."""
        return []


def _format_values(values: Mapping[str, Any]) -> dict:
    out = dict(values)
    block = values.get("block_size")
    if block is not None:
        out["block"] = "x".join(str(b) for b in block)
    return out


def attack_labels(labels: torch.Tensor, target_class: Optional[int]) -> torch.Tensor:
    """Labels an attack is given: the true ones, or ``target_class`` everywhere when targeting.

    Args:
        labels: ``[B, 1, H, W, D]`` true labels.
        target_class: the class a targeted attack pushes every voxel to, or ``None``.
    """
    return labels if target_class is None else torch.full_like(labels, target_class)


def predict(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class per voxel, ``[B, N, H, W, D] -> [B, 1, H, W, D]`` (first maximum on ties).

    ``max(dim=1).indices`` rather than ``argmax(dim=1)``: same result, several
    times faster on CPU for channel-first volumes.
    """
    return logits.max(dim=1, keepdim=True).indices


def fooled_fraction(pred: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Fraction of voxels where ``pred != labels`` (``==`` when targeted), a 0-dim tensor."""
    hit = pred == labels if targeted else pred != labels
    return hit.sum() / hit.numel()  # counts in int64: exact, and no float copy of the mask


def _autograd_ready(x: torch.Tensor) -> torch.Tensor:
    """Detached tensor usable by autograd (an inference-mode tensor is copied)."""
    x = x.detach()
    if x.is_inference():
        with torch.inference_mode(False):
            x = x.clone()
    return x


def _check_inputs(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 5:
        raise ValueError(f"images must be [B, C, H, W, D], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating tensor in [0, 1], got dtype {images.dtype}")
    expected = (images.shape[0], 1, *images.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(f"labels must have shape {expected} (images {tuple(images.shape)}), got {tuple(labels.shape)}")
