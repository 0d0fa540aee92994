"""Hand the engine's :class:`SolverWarning`s to a front end instead of the default stderr dump.

The engine warns (``warnings.warn``) when it adds jitter to a factorization, clamps negative
variances or, with ``best_effort=True``, goes on after an unconverged solve. The CLI prints each as
one ``warning: ...`` line; the worker forwards each as a ``warning`` event. Other warnings keep
going to the previous ``warnings.showwarning``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

from .errors import SolverWarning


def warning_fields(message: Warning) -> dict[str, str]:
    """Return the ``{"message", "category"}`` a front end shows for one solver warning."""
    return {"message": str(message), "category": type(message).__name__}


@contextlib.contextmanager
def solver_warnings_to(handler: Callable[[dict[str, str]], None],
                       seen: set[tuple[str, str]] | None = None) -> Iterator[None]:
    """Within the block, call ``handler(warning_fields(w))`` for every SolverWarning, once per message.

    ``seen`` holds the (category, message) pairs already handed on; pass the same set to several
    blocks to keep "once per message" across them.
    """
    seen = set() if seen is None else seen
    with warnings.catch_warnings():
        previous = warnings.showwarning
        warnings.simplefilter("always", SolverWarning)  # ours to deduplicate, not the registry's

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, SolverWarning):
                previous(message, category, filename, lineno, file, line)
                return
            fields = warning_fields(message if isinstance(message, Warning) else category(str(message)))
            key = (fields["category"], fields["message"])
            if key not in seen:
                seen.add(key)
                handler(fields)

        warnings.showwarning = show
        yield
