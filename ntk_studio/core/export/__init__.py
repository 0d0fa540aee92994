"""Export of the adapted predictor: ONNX (mean and variance, dynamic batch) and torch.export programs.

Every file is verified against the in-app predictions before :func:`export_predictor` returns.
Needs the ``export`` extra (onnx, onnxscript, onnxruntime) for ONNX files.
"""

from .api import VERIFY_BATCHES, VERIFY_RTOL, ExportReport, export_predictor, relative_error
from .files import onnx_session, read_onnx_metadata
from .posterior import LinearPosterior, posterior_from_classifier, posterior_from_gp

__all__ = [
    "VERIFY_BATCHES", "VERIFY_RTOL", "ExportReport", "LinearPosterior", "export_predictor", "onnx_session",
    "posterior_from_classifier", "posterior_from_gp", "read_onnx_metadata", "relative_error",
]
