"""`python -m ntk_studio` starts the desktop app, exactly like the `ntk-studio` launcher.

The command line is `python -m ntk_studio.cli` (or `ntk-studio-cli`).
"""

import sys

from ntk_studio.app.main import main

sys.exit(main())
