"""The root of NTK Studio's typed errors, importable without torch (the GUI process uses it)."""


class NTKStudioError(Exception):
    """Base class of every error NTK Studio raises on purpose."""
