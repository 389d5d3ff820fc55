"""What every front end renders a run from, with no widget library imported.

- ``snapshot``: the full snapshot of a run (a plain dict) and its text/html renderings;
- ``reader``: ``RunReader``, which keeps a run's log tail, rate and cancel origin current by
  reading only the events it has not seen.

The Jupyter panel (``tether.widget``), ``tether watch`` and ``tether serve`` share them, so every
front end shows the same truth. Importing this package imports no widget library.
"""
