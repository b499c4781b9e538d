"""The `python -m pipeline` command group: one sub-command per stage."""

import typer

from pipeline import augment, convert, sample, split, train

app = typer.Typer(
    help="segpipe stages: sample data, convert, split, augment, train (run them through `dvc repro`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("sample")(sample.main)
app.command("convert")(convert.main)
app.command("split")(split.main)
app.command("augment")(augment.main)
app.command("train")(train.main)
