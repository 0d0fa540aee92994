"""`ntk-studio-cli`: the console front end (imports core and jobs only)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from ntk_studio import __version__

from . import output
from .commands import adapt, compare, demo, export, inspect, predict, worker
from .arg_types import positive_float, thread_count

DEFAULT_THREADS = 1  # two shared cores: more intra-op threads thrash on small problems
DEFAULT_ARCH_TIMEOUT_S = 120.0  # import + factory() of a user's architecture file, run isolated first
ARCH_TIMEOUT_ENV = "NTK_STUDIO_ARCH_TIMEOUT_S"  # read by core.models.architecture (no torch import here)
COMMAND_MODULES = (demo, adapt, inspect, compare, export, predict, worker)  # `--help` lists them in this order
EXIT_INTERNAL = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Append "(default: X)" to an option's help unless the text already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        meaningless = default in (None, False, argparse.SUPPRESS) or (isinstance(default, list) and not default)
        if "default" in text or meaningless or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ntk-studio-cli", description="NTK Studio command line.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=thread_count, default=DEFAULT_THREADS,
                        help="torch intra-op threads, 1 to this machine's cores (default 1)")
    common.add_argument("--arch-timeout", type=positive_float, default=DEFAULT_ARCH_TIMEOUT_S, metavar="SECONDS",
                        help="time limit for running an --arch file's factory, isolated, before loading it "
                             f"(default {DEFAULT_ARCH_TIMEOUT_S:g})")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command")
    original = sub.add_parser

    def add_parser(*a, **kw):
        kw.setdefault("parents", [common])
        kw.setdefault("formatter_class", _DefaultsHelpFormatter)
        return original(*a, **kw)

    sub.add_parser = add_parser
    for command in COMMAND_MODULES:
        command.add_parser(sub)
    examples = sub.add_parser("examples", help="list the built-in examples and whether they are installed")
    examples.set_defaults(run=_list_examples)
    return parser


def _list_examples(args: argparse.Namespace) -> int:
    from ntk_studio.core.examples.registry import list_examples

    print(f"{'example':<10} {'installed':<20} description")
    for name, description, available in list_examples():
        print(f"{name:<10} {'yes' if available else 'no (extra missing)':<20} {description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    import torch

    from ntk_studio.core.errors import NTKStudioError
    from ntk_studio.core.warning_capture import solver_warnings_to

    torch.set_num_threads(max(1, args.threads))
    try:
        outputs = output.check_outputs(args)  # before any work: an output never overwrites an input
        with solver_warnings_to(_print_warning), \
                _env(ARCH_TIMEOUT_ENV, str(getattr(args, "arch_timeout", DEFAULT_ARCH_TIMEOUT_S))), \
                output.committed_together(outputs):
            code = args.run(args)
            if code:
                raise _Failed(code)  # a run that reports failure commits no output either
        return code
    except _Failed as failed:
        return failed.code
    except NTKStudioError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if args.debug:
            raise
        print(f"error: {exc.strerror or exc} ({exc.filename or ''})", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError:
        if args.debug:
            raise
        print("error: out of memory; use smaller inputs (fewer rows, a smaller --input-shape) or a bigger machine.",
              file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug: one line, not a traceback, unless --debug
        if args.debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"error: internal error ({type(exc).__name__}: {first}); this is a bug in NTK Studio. Rerun with "
              "--debug for the traceback and report it.", file=sys.stderr)
        return EXIT_INTERNAL


def _print_warning(fields: dict[str, str]) -> None:
    """Print one engine SolverWarning (jitter, clamped variances, a best-effort solve) as one line."""
    print(f"warning: {fields['message']}", file=sys.stderr, flush=True)


class _Failed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextlib.contextmanager
def _env(name: str, value: str):
    """Set an environment variable for the length of the block, then restore it."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


if __name__ == "__main__":
    sys.exit(main())
