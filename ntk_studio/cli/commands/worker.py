"""`ntk-studio-cli worker`: speak the JSON-lines worker protocol on stdin/stdout (for the GUI and scripts)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    """Register the worker subcommand."""
    worker = sub.add_parser("worker", help="speak the JSON-lines worker protocol on stdin/stdout")
    worker.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve protocol requests until shutdown or EOF; return the exit code."""
    from ntk_studio.jobs.worker import serve

    protocol_out = sys.stdout
    sys.stdout = sys.stderr  # a stray print must not corrupt the protocol stream
    try:
        return serve(sys.stdin, protocol_out)
    finally:
        sys.stdout = protocol_out
