"""NTK Studio: adapt pretrained PyTorch models with the linearized network's Gaussian process.

Importing this package is cheap on purpose: it imports neither torch nor Qt, so the CLI and the
window start fast. The engine lives in :mod:`ntk_studio.core`.
"""

__version__ = "0.1.0"
