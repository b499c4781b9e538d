"""`python -m pipeline preset PRESET.yaml [...]`: write a preset's settings into params.yaml."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import ParamsOption, reports_errors


@reports_errors
def main(
    presets: Annotated[list[Path], typer.Argument(help="Preset files (e.g. params-aerial.yaml), applied in order.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Make params.yaml the defaults with the presets' keys over them (comments kept), and list each change.

    Keys no preset names return to their defaults, so the result does not depend on what params.yaml
    held before; `git diff params.yaml` shows the change and `git checkout params.yaml` undoes it.
    """
    from segpipe.presets import apply_presets

    changes = apply_presets(params, presets)
    for key, old, new in changes:
        typer.echo(f"preset: {key}: {old!r} -> {new!r}")
    names = ", ".join(str(p) for p in presets)
    typer.echo(f"preset: {params} now holds {names} ({len(changes)} change(s))")
