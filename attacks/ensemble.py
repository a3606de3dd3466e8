"""Worst case over several attacks, per tile (SEA-style; Croce, Singh, Hein, ECCV 2024)."""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from utils.options import Option, canonical_values

from .apgd import APGD
from .base import Attack, LossFn
from .cospgd import CosPGD
from .options import ALPHA, EPS, NORM, STEPS, TARGETED, non_negative, positive_int
from .projection import check_norm
from .seg_losses import APGD_LOSSES, tile_score
from .segpgd import SegPGD
from .vafa import VAFA3D
from .voxel import PGD

Builder = Callable[..., Attack]


def _apgd(loss: str) -> Builder:
    def build(model, loss_fn, *, eps, alpha, steps, norm, targeted):
        return APGD(model, loss_fn, eps=eps, steps=steps, loss=loss, norm=norm, targeted=targeted)
    return build


def _linf_only(cls) -> Builder:
    def build(model, loss_fn, *, eps, alpha, steps, norm, targeted):
        if norm != "linf":
            raise ValueError(f"worst-case member {cls.name!r} is L-inf only; drop it from --attacks or use --norm linf")
        return cls(model, loss_fn, eps=eps, alpha=alpha, steps=steps, targeted=targeted)
    return build


MEMBERS: Dict[str, Builder] = {
    **{f"apgd-{loss}": _apgd(loss) for loss in APGD_LOSSES},
    "pgd": _linf_only(PGD),
    "segpgd": _linf_only(SegPGD),
    "cospgd": lambda model, loss_fn, *, eps, alpha, steps, norm, targeted: CosPGD(
        model, loss_fn, eps=eps, alpha=alpha, steps=steps, norm=norm, targeted=targeted),
    "vafa-3d": lambda model, loss_fn, *, eps, alpha, steps, norm, targeted: VAFA3D(
        model, loss_fn, steps=steps, targeted=targeted),
}
"""What ``--attacks`` may list: each built from the ensemble's ``eps/alpha/steps/norm/targeted``
(VAFA-3D with its own defaults and ``steps``; it ignores the ball)."""

DEFAULT_MEMBERS = ("apgd-masked-ce", "apgd-masked-ce-bal", "apgd-js")
"""SEA's APGD losses (SEA's fourth, the masked spherical loss, is not implemented)."""

MEMBERS_OPTION = Option("attacks", str, list(DEFAULT_MEMBERS), "worst-case: the attacks whose per-tile worst "
                        "case is kept", choices=tuple(MEMBERS), nargs="+")

_STEPPED = {"pgd", "segpgd", "cospgd"}


class WorstCase(Attack):
    """Run several attacks on each tile batch and keep, per tile, the one that hurts most.

    Every member attacks the same tiles from the clean images; the model then predicts
    every member's result once more, and each tile keeps the result with the lowest
    :func:`attacks.seg_losses.tile_score` (mean Dice over the classes in its labels;
    targeted, the fraction of voxels not yet at the target); ties go to the member listed
    first. This is SEA's per-image worst case applied to each tile of a volume (SEA's
    2ε → 1.5ε → ε radius schedule inside each APGD run is not applied).

    The reports count the tiles each member won (``won[<member>]``) and name the member
    that won most (``worst_case_winner``) for every case. Each member's own results are
    offered (:meth:`call_candidates`) so that the evaluation compares, on the whole stitched
    volume, the per-tile mix with every member's volume and keeps the lowest Dice
    (``volume_winner``).

    Args:
        model: segmentation network.
        loss_fn: the Dice-CE (for ``apgd-dice-ce`` and ``vafa-3d``).
        attacks: member names, keys of :data:`MEMBERS`, each at most once.
        eps, alpha, steps, norm, targeted: shared by the members (see each attack).

    Attributes:
        winner: ``[B]`` index into ``attacks`` of the kept result of each tile of the last call.
        scores: ``[M, B]`` every member's tile scores in the last call.

    Raises:
        ValueError: no or unknown or repeated members, a member that refuses the values.
    """

    name = "worst-case"
    options = (MEMBERS_OPTION, STEPS, ALPHA, EPS, NORM, TARGETED)
    presets = {"eps": 4}  # the voxel attacks' budget of the paper's Table 1
    folder_format = "worst_case_{members}_{norm}_eps_{eps}_i_{steps}"
    summary_format = "worst case of {members}: norm={norm}, eps={eps}/255, steps={steps}, targeted={targeted}"

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, attacks: Sequence[str] = DEFAULT_MEMBERS,
                 eps: float, alpha: float = 0.01, steps: int = 20, norm: str = "linf", targeted: bool = False):
        super().__init__(model, loss_fn, targeted)
        attacks = tuple(attacks)
        if not attacks:
            raise ValueError("worst-case needs at least one member attack in --attacks")
        unknown = [a for a in attacks if a not in MEMBERS]
        if unknown:
            raise ValueError(f"unknown worst-case member(s) {unknown}; valid: {', '.join(MEMBERS)}")
        if len(set(attacks)) != len(attacks):
            raise ValueError(f"worst-case members must differ, got {list(attacks)}")
        self.attacks = attacks
        self.eps, self.alpha = non_negative("eps", eps), non_negative("alpha", alpha)
        self.steps, self.norm = positive_int("steps", steps), check_norm(norm)
        self.members = [MEMBERS[a](model, loss_fn, eps=self.eps, alpha=self.alpha, steps=self.steps,
                                   norm=self.norm, targeted=self.targeted) for a in attacks]
        self.winner: Optional[torch.Tensor] = None
        self.scores: Optional[torch.Tensor] = None
        self.member_advs: Optional[Dict[str, torch.Tensor]] = None

    def check_tile(self, tile_shape: Sequence[int]) -> None:
        for member in self.members:
            member.check_tile(tile_shape)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Run every member; ``images [B, C, H, W, D]`` in [0, 1], ``labels [B, 1, H, W, D]``."""
        best, best_score, winner, scores = None, None, None, []
        self.member_advs = {}
        for index, member in enumerate(self.members):
            adv = member(images, labels)
            self.member_advs[self.attacks[index]] = adv
            with torch.no_grad():
                score = tile_score(self.model(adv), labels, self.targeted)  # [B]
            scores.append(score)
            if best is None:
                best, best_score, winner = adv, score, torch.zeros_like(score, dtype=torch.long)
                continue
            better = score < best_score
            best = torch.where(better.view((-1,) + (1,) * (adv.ndim - 1)), adv, best)
            best_score = torch.where(better, score, best_score)
            winner = torch.where(better, torch.full_like(winner, index), winner)
        self.winner, self.scores = winner, torch.stack(scores)
        return best

    # ------------------------------------------------------------------ reports

    def call_candidates(self) -> Optional[Mapping[str, torch.Tensor]]:
        """Each member's own result of the last call (compared again on the stitched volume)."""
        return self.member_advs

    def call_parts(self) -> Optional[Mapping[str, torch.Tensor]]:
        """Tiles won by each member in the last call: ``{"won[<member>]": count}``."""
        if self.winner is None:
            return None
        return {f"won[{name}]": (self.winner == index).sum() for index, name in enumerate(self.attacks)}

    @classmethod
    def case_metrics(cls, sums: Mapping[str, float]) -> dict:
        """``won[<member>]`` tile counts over the volume and ``worst_case_winner``, the member with most."""
        won = {key: int(value) for key, value in sums.items() if key.startswith("won[")}
        if not won:
            return {}
        top = max(won, key=won.get)  # first listed on ties (dicts keep the members' order)
        return {**won, "worst_case_winner": top[len("won["):-1]}

    # ------------------------------------------------------------------ identity

    @classmethod
    def _values(cls, values: Mapping) -> dict:
        out = dict(values)
        members = tuple(values.get("attacks") or DEFAULT_MEMBERS)
        out["members"] = "+".join(members)
        return out

    @classmethod
    def format_folder_name(cls, values) -> str:
        """``worst_case_<m1>+<m2>..._<norm>_eps_<eps>_i_<steps>`` (``_alpha_<alpha>`` with a PGD-like member)."""
        values = cls._values(values)
        name = cls.folder_format.format(**values)
        if _STEPPED & set(values.get("attacks") or ()):
            name += f"_alpha_{values.get('alpha')}"
        return name

    @classmethod
    def summary(cls, values) -> str:
        return cls.summary_format.format(**cls._values(canonical_values(cls.options, values)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(attacks={list(self.attacks)}, eps={self.eps}, alpha={self.alpha}, "
                f"steps={self.steps}, norm={self.norm!r}, targeted={self.targeted})")
