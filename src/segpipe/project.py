"""Where the project is: the one place every phase may ask (the decoded cache, MLflow's store),
so the data phase needs nothing from tracking."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def project_root(start: Path | None = None) -> Path:
    """The project's root: DVC_ROOT (outside DVC's temporary experiment copies), else git's, else cwd."""
    start = Path(start or Path.cwd()).resolve()
    root = Path(os.environ["DVC_ROOT"]).resolve() if os.environ.get("DVC_ROOT") else None
    if root is None:
        try:
            out = subprocess.run(
                ["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True, check=True
            )
            root = Path(out.stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            root = start
    # A temp or queued experiment runs in <project>/.dvc/tmp/exps/<run>/...: log to <project>.
    return dvc_copy_owner(root) or root


def dvc_copy_owner(path: Path) -> Path | None:
    """The project whose temporary DVC experiment copy (<project>/.dvc/tmp/exps/...) holds
    `path`, or None when `path` lies outside any such copy."""
    parts = Path(path).parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return None
