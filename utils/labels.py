"""Class names of the supported datasets, index = label value (DESIGN §2)."""

CLASS_NAMES: dict[str, list[str]] = {
    "btcv": [
        "background", "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver",
        "stomach", "aorta", "IVC", "portal and splenic veins", "pancreas", "right adrenal", "left adrenal",
    ],
    "acdc": ["background", "RV", "myocardium", "LV"],
}
