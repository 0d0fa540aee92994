"""Typed errors the engine raises; each message says what to do about it."""


from ntk_studio.errors import NTKStudioError

__all__ = ["NTKStudioError"]  # re-exported: core users catch it from here


class ParameterSelectionError(NTKStudioError, ValueError):
    """The parameter subset specification does not match the model."""


class ShapeError(NTKStudioError, ValueError):
    """Inputs or targets have shapes the model or the GP cannot use."""


class NotFittedError(NTKStudioError, RuntimeError):
    """A method that needs a fitted GP was called before `fit`."""


class MemoryBudgetError(NTKStudioError, MemoryError):
    """The requested route needs more memory than the configured budget."""


class SolverError(NTKStudioError, RuntimeError):
    """A linear solve failed (not positive definite, or CG/Newton did not converge); the message says what to change."""


class SolverWarning(NTKStudioError, UserWarning):
    """A solve was inexact but the caller asked for best effort, or jitter/clamping changed the answer."""


class SettingsError(NTKStudioError, ValueError):
    """A constructor setting is not one of its allowed values, or not a finite positive number."""


class Cancelled(NTKStudioError):
    """The job was cancelled through its cancel token."""


class ModelLoadError(NTKStudioError, ValueError):
    """A model file could not be loaded (format, corruption, architecture mismatch)."""


class UntrustedPickleError(ModelLoadError):
    """The file is a pickled module, which runs code when loaded; pass trust to load it anyway."""


class DataLoadError(NTKStudioError, ValueError):
    """A dataset file could not be read or does not fit the requested columns/model."""


class ExampleUnavailableError(NTKStudioError, ImportError):
    """A built-in example needs an optional extra that is not installed."""


class FineTuneSettingsError(NTKStudioError, ValueError):
    """A fine-tuning setting is out of range (optimizer, task, learning rate, sizes)."""


class DistributedError(NTKStudioError, RuntimeError):
    """A distributed run failed: a rank died or timed out, or the process group could not start."""


class CheckpointError(NTKStudioError, ValueError):
    """A checkpoint file is unreadable or belongs to a different problem."""


class ExportError(NTKStudioError, RuntimeError):
    """The adapted predictor could not be exported."""


class UnsupportedExportError(ExportError):
    """The model (or a layer in it) cannot be written as an exact, dynamic-batch ONNX graph."""


class ExportTooLargeError(ExportError, MemoryError):
    """The exact posterior representation would exceed the export size or memory limit."""


class ExportVerificationError(ExportError):
    """The exported file's predictions differ from the in-app predictions beyond the tolerance."""


class DeviceError(SettingsError):
    """The requested device does not exist or cannot be used (unknown spec, no CUDA, bad index)."""
