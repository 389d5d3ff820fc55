"""tether: durable, idempotent long runs for notebooks.

```python
import tether

@tether.pipeline(phases=["scanning", "applying"])
def refactor(ctx, repo: str):
    ctx.phase("scanning", total=3)
    for f in ctx.track(["a.py", "b.py", "c.py"]):
        ...
    return {"changed": 3}

run = refactor.start(repo="./app")   # same params again -> the same run
run.result()
```
"""

# no `from __future__ import annotations` here: it would put `annotations` in dir(tether)

from . import workspace
from .codec import register_codec
from .config import Settings
from .context import Context
from .errors import (
    KeyConflict,
    MapItemError,
    ParamsError,
    PipelineError,
    PipelineNotFound,
    RunActive,
    RunCancelled,
    RunError,
    RunFailed,
    RunInterrupted,
    RunNotFound,
    StoreError,
    TetherError,
)
from .model import Event, Progress, Status
from .pipeline import Pipeline
from .run import Run
from .workspace import configure, get_run, pipeline, runs, use_front_end

__version__ = "0.1.0"


def _front_end() -> workspace.FrontEnd:
    # the widget needs ipywidgets + anywidget: imported at the first display, not by `import tether`
    from . import widget

    return widget


use_front_end(_front_end)
del use_front_end


def __getattr__(name: str) -> object:
    # panel/dashboard need ipywidgets + anywidget: imported on first use, not by `import tether`
    if name in ("panel", "dashboard"):
        from . import widget

        return getattr(widget, name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the public API (tab completion), not the submodules imported on the way
    return sorted([*__all__, "__version__"])


__all__ = [
    "Context",
    "Event",
    "KeyConflict",
    "MapItemError",
    "ParamsError",
    "Pipeline",
    "PipelineError",
    "PipelineNotFound",
    "Progress",
    "Run",
    "RunActive",
    "RunCancelled",
    "RunError",
    "RunFailed",
    "RunInterrupted",
    "RunNotFound",
    "Settings",
    "Status",
    "StoreError",
    "TetherError",
    "configure",
    "dashboard",
    "get_run",
    "panel",
    "pipeline",
    "register_codec",
    "runs",
]
