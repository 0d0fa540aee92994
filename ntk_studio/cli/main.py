"""`ntk-studio-cli`: the console front end (imports core and jobs only)."""

from __future__ import annotations

import argparse
import sys

from ntk_studio import __version__

from . import adapt, compare_cmd, demo, export_cmd, inspect_cmd, predict_cmd, worker_cmd

DEFAULT_THREADS = 1  # two shared cores: more intra-op threads thrash on small problems
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ntk-studio-cli", description="NTK Studio command line.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch intra-op threads (default 1)")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command")
    original = sub.add_parser

    def add_parser(*a, **kw):
        kw.setdefault("parents", [common])
        return original(*a, **kw)

    sub.add_parser = add_parser
    demo.add_parser(sub)
    adapt.add_parser(sub)
    inspect_cmd.add_parser(sub)
    compare_cmd.add_parser(sub)
    export_cmd.add_parser(sub)
    predict_cmd.add_parser(sub)
    worker_cmd.add_parser(sub)
    examples = sub.add_parser("examples", help="list the built-in examples and whether they are installed")
    examples.set_defaults(run=_list_examples)
    return parser


def _list_examples(args: argparse.Namespace) -> int:
    from ntk_studio.core.examples.registry import list_examples

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

    torch.set_num_threads(max(1, args.threads))
    try:
        return args.run(args)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
