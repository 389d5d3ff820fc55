"""A tether run in marimo: the panel of a run, live, in ``marimo edit`` and ``marimo run``.

    pip install -e ".[marimo]"
    cd notebooks && marimo edit marimo_panel.py      # or: marimo run marimo_panel.py

See docs/marimo.md. Run from this folder: the pipeline is imported from pipelines.py, and the
runs go to .tether/runs.db here, as with the Jupyter notebooks.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import os
    import tempfile

    import marimo as mo
    from pipelines import etl

    import tether

    journal = os.path.join(tempfile.gettempdir(), "tether-marimo-etl.journal")  # what etl really ran
    return etl, journal, mo, tether


@app.cell
def _(mo):
    files = mo.ui.slider(4, 40, value=12, label="files")
    note = mo.ui.text(label="note")
    mo.hstack([files, note], justify="start")
    return files, note


@app.cell
def _(etl, files, journal, mo, note, tether):
    # start() is idempotent: a new `note` re-runs this cell and gives back the same run (its panel,
    # live); a new `files` value is other params, so another run
    run = etl.start(log=journal, n=files.value, delay=0.3)
    mo.vstack([mo.md(f"note: {note.value or '(none)'}"), tether.panel(run)])
    return


if __name__ == "__main__":
    app.run()
