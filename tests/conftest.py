import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

# Two cores shared with other work: two intra-op threads on tiny test problems thrash (10–100×
# slower under load). One thread keeps the suite fast and its timing stable.
torch.set_num_threads(1)

# The app's settings and log file go to a throwaway folder, never the user's (see ntk_studio.paths).
os.environ.setdefault("NTK_STUDIO_HOME", tempfile.mkdtemp(prefix="ntk-studio-test-home-"))
