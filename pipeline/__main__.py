from pipeline.app import app

app(prog_name="python -m pipeline")
