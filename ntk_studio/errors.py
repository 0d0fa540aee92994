"""The root of NTK Studio's typed errors, :class:`NTKStudioError`, in a module that imports nothing.

Why it is not in ``ntk_studio.core.errors`` with the others: importing anything under
``ntk_studio.core`` loads torch (``core/__init__`` imports the engine), and the GUI process, the
protocol (``jobs/protocol.py``), ``safe_io`` and the desktop entry must start without torch
(tests/test_layering.py). They catch and raise this root from here; ``core.errors`` re-exports it
and defines every engine error as its subclass, so ``except NTKStudioError`` catches both. Add new
error classes to ``core/errors.py``, not here.
"""


class NTKStudioError(Exception):
    """Base class of every error NTK Studio raises on purpose."""
