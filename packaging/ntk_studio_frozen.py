"""Entry point of the PyInstaller build: one binary that is the app, its worker and the CLI.

    ntk-studio [app options]         the desktop app (as the `ntk-studio` launcher)
    ntk-studio-cli <command> ...     the command line: a symlink to the binary (the spec makes it)
    ntk-studio cli <command> ...     the same, where no symlink can be made (Windows)
    ntk-studio -m ntk_studio.X ...   run a module of the package; the app starts its worker
                                     process this way (`sys.executable -m ntk_studio.jobs.worker`),
                                     and in a frozen build sys.executable is this binary
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

PACKAGE_PREFIX = "ntk_studio."  # `-m` runs only the app's own modules
CLI_NAME = "ntk-studio-cli"


def main(argv: list[str]) -> int:
    """Dispatch to the app, the CLI or a package module; return the exit code."""
    if argv[:1] == ["-m"]:
        if len(argv) < 2 or not argv[1].startswith(PACKAGE_PREFIX):
            print(f"usage: {sys.argv[0]} -m {PACKAGE_PREFIX}<module> [args]", file=sys.stderr)
            return 2
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    called_as_cli = Path(sys.argv[0]).stem == CLI_NAME
    if called_as_cli or argv[:1] == ["cli"]:
        from ntk_studio.cli.main import main as cli_main

        return cli_main(argv if called_as_cli else argv[1:])
    from ntk_studio.app.main import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
