"""The `tether` command (the console script): `tether ls` without tether's package ``__init__``.

``import tether`` loads the whole library (engine, runs, pipelines: ~2/3 of a listing process's
time). A ``tether ls`` process needs only the store and the table, so it loads tether's package
without its ``__init__`` and runs ``tether._ls``; every other command runs ``tether.cli`` as
usual. Nothing else runs in such a process, so the package's public names are never missed.
"""

from __future__ import annotations

import importlib.util
import sys


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["ls"] and "tether" not in sys.modules:
        spec = importlib.util.find_spec("tether")
        if spec is not None and spec.loader is not None:
            package = sys.modules["tether"] = importlib.util.module_from_spec(spec)  # no __init__ run
            from tether._ls import main as ls

            status = ls(argv[1:])
            if status is not None:
                return status
            spec.loader.exec_module(package)  # the full CLI gets the whole package, as usual
    from tether.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
