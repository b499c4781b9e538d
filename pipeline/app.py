"""The `python -m pipeline` command group (the `segpipe` command once installed): one sub-command per stage."""

import typer

from pipeline import augment, compare, convert, evaluate, export, predict, preset, promote, sample, serve, split, suggest, train

app = typer.Typer(
    help="segpipe: sample data, the pipeline stages (run them through `dvc repro`), predict, compare, promote and serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("sample")(sample.main)
app.command("convert")(convert.main)
app.command("split")(split.main)
app.command("augment")(augment.main)
app.command("train")(train.main)
app.command("evaluate")(evaluate.main)
app.command("predict")(predict.main)
app.command("suggest")(suggest.main)
app.command("export")(export.main)
app.command("compare")(compare.main)
app.command("promote")(promote.main)
app.command("serve")(serve.main)
app.command("preset")(preset.main)


def main() -> None:
    """The `segpipe` console script of a pip-installed project: the same commands as `python -m pipeline`."""
    app(prog_name="segpipe")
