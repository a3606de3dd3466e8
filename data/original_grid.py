"""Label maps back on the grid of the case's file (``--save_predictions``): the loading transforms undone."""

from __future__ import annotations

import numpy as np


def to_original_grid(prediction: "torch.Tensor", reference, transform) -> tuple[np.ndarray, np.ndarray]:
    """A label map on the loaded grid, back on the grid of the case's file (``--save_predictions``).

    The eval transforms' spatial steps (orientation, spacing, foreground crop, ACDC's pad/crop) are undone
    in reverse order by MONAI's ``Invertd`` with nearest-neighbour interpolation, so the map overlays the
    original image (same shape and affine).

    Args:
        prediction: ``[1, H, W, D]`` class indices on the loaded grid.
        reference: the loaded ``image`` (a MetaTensor carrying its applied transforms).
        transform: the very ``Compose`` that loaded it (MONAI matches transforms by identity).

    Returns:
        ``(labels [X, Y, Z] int array, affine [4, 4])`` on the file's grid.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    pred = MetaTensor(prediction.detach().cpu().float(), meta=dict(reference.meta))
    pred.applied_operations = list(reference.applied_operations)
    inverted = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=True)(
        {"pred": pred, "image": reference})["pred"]
    labels = torch.as_tensor(inverted)[0].round().to(torch.int64).numpy()
    return labels, np.asarray(inverted.affine, dtype=np.float64)
