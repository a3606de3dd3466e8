"""Published numbers of the paper, for the sweep presets to print beside ours.

Source: A. Hanif, M. Naseer, S. Khan, M. Shah, F. S. Khan, "Frequency Domain Adversarial
Training for Robust Volumetric Medical Segmentation", MICCAI 2023, Tables 1-6 (Synapse,
UNETR unless noted). Dice and LPIPS similarity in %, HD95 as published. Tables 2-4 vary one
VAFA setting (block 8x8x8, q_max 20, 20 steps unless that is the varied one).
"""

from __future__ import annotations

PAPER = "Hanif et al., MICCAI 2023"

CLEAN = {"dice": 74.31, "hd95": 14.0}
"""UNETR on Synapse without attack (Table 1; Table 5 prints 74.3 / 14.0)."""

TABLE1 = {  # row label -> Dice, LPIPS similarity (VAFA block 8x8x8, voxel attacks eps/std 4)
    "clean": {"dice": 74.31, "lpips": None},
    "PGD": {"dice": 62.67, "lpips": 98.94},
    "FGSM": {"dice": 62.77, "lpips": 98.82},
    "BIM": {"dice": 62.76, "lpips": 98.93},
    "GN": {"dice": 74.19, "lpips": 97.71},
    "VAFA-2D": {"dice": 61.66, "lpips": 98.43},
    "VAFA": {"dice": 52.54, "lpips": 97.84},
}

TABLE2 = {  # q_max -> Dice, LPIPS similarity
    10: {"dice": 65.95, "lpips": 99.10}, 20: {"dice": 56.24, "lpips": 98.70}, 30: {"dice": 50.96, "lpips": 98.33},
    40: {"dice": 49.58, "lpips": 97.90}, 60: {"dice": 48.83, "lpips": 96.60}, 80: {"dice": 48.76, "lpips": 94.50},
}

TABLE3 = {  # steps -> Dice, LPIPS similarity
    10: {"dice": 61.33, "lpips": 98.85}, 20: {"dice": 56.24, "lpips": 98.70}, 30: {"dice": 54.37, "lpips": 98.64},
    40: {"dice": 53.31, "lpips": 98.59}, 50: {"dice": 52.97, "lpips": 98.54}, 60: {"dice": 52.25, "lpips": 98.52},
}

TABLE4 = {  # cubic block side -> Dice, LPIPS similarity
    4: {"dice": 63.48, "lpips": 98.90}, 8: {"dice": 56.24, "lpips": 98.70}, 16: {"dice": 41.30, "lpips": 98.14},
    32: {"dice": 32.40, "lpips": 97.49}, 48: {"dice": 28.19, "lpips": 97.16}, 96: {"dice": 28.08, "lpips": 96.47},
}

TABLE5 = {  # row label -> Dice, HD95, LPIPS similarity (UNETR; VAFA block 32x32x32)
    "clean": {"dice": 74.3, "hd95": 14.0, "lpips": None},
    "PGD eps=4": {"dice": 62.7, "hd95": 40.4, "lpips": 98.9},
    "PGD eps=8": {"dice": 50.8, "hd95": 64.5, "lpips": 95.3},
    "FGSM eps=4": {"dice": 62.8, "hd95": 34.8, "lpips": 98.8},
    "FGSM eps=8": {"dice": 53.9, "hd95": 48.7, "lpips": 94.7},
    "BIM eps=4": {"dice": 62.8, "hd95": 39.9, "lpips": 98.8},
    "BIM eps=8": {"dice": 50.7, "hd95": 65.8, "lpips": 95.3},
    "GN std=4": {"dice": 74.2, "hd95": 17.0, "lpips": 97.7},
    "GN std=8": {"dice": 73.9, "hd95": 15.4, "lpips": 91.1},
    "VAFA q_max=20": {"dice": 32.2, "hd95": 57.6, "lpips": 97.5},
    "VAFA q_max=30": {"dice": 29.8, "hd95": 59.9, "lpips": 96.9},
}

TABLE6 = {  # robust model -> Dice under each attack (UNETR, Synapse)
    "M_PGD": {"clean": 73.47, "PGD": 65.53, "FGSM": 65.68, "BIM": 65.51, "VAFA": 42.47},
    "M_VAFA": {"clean": 74.67, "PGD": 64.83, "FGSM": 65.49, "BIM": 64.73, "VAFA": 66.31},
    "M_VAFA-FR": {"clean": 75.66, "PGD": 65.90, "FGSM": 66.79, "BIM": 65.83, "VAFA": 66.33},
}
