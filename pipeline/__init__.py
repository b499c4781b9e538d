"""The stage commands that `dvc.yaml` runs: `python -m pipeline STAGE ...`.

Each module parses arguments, loads params, calls one function of `segpipe` and reports.
"""

import sys
from pathlib import Path

# Run the library that sits beside this folder, not whatever `segpipe` is installed: a
# `dvc exp run --temp` or queued experiment runs in its own copy of the repo and must execute that
# copy's code. Installed with pip (the `segpipe` command), no src/segpipe lies beside it and the
# installed library runs.
_SRC = Path(__file__).resolve().parent.parent / "src"
if (_SRC / "segpipe").is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))
