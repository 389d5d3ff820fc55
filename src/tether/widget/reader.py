"""Alias of :mod:`tether.view.reader` (moved there so front ends without widgets import it
without anywidget): ``tether.widget.reader`` is the same module object, so setting one of its
names here sets it there."""

from __future__ import annotations

import sys

from ..view import reader as _reader

sys.modules[__name__] = _reader
