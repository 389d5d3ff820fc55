"""Alias of :mod:`tether.view.snapshot` (moved there so front ends without widgets import it
without anywidget): ``tether.widget.snapshot`` is the same module object, so setting one of its
names here sets it there."""

from __future__ import annotations

import sys

from ..view import snapshot as _snapshot

sys.modules[__name__] = _snapshot
