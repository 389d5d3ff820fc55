from __future__ import annotations

import tether


def test_start_runs_to_success_and_is_idempotent(db):
    @tether.pipeline(phases=["a", "b"])
    def smoke(ctx, n: int = 3):
        ctx.phase("a", total=n)
        for _ in ctx.track(range(n)):
            pass
        ctx.phase("b")
        return {"n": n}

    run = smoke.start()
    assert run.result(timeout=30) == {"n": 3}
    assert run.status == "succeeded"
    again = smoke.start(n=3)  # defaults are bound before hashing: same key
    assert again.id == run.id
    assert [r.id for r in tether.runs()] == [run.id]


def test_import_stays_light(tmp_path):
    """`import tether` (and the CLI) leaves heavy modules to the code paths that need them:
    sqlite-utils to migrating a database, ipywidgets to the panel, asyncio to async pipelines,
    psutil to platforms without /proc. Then a new database is still created and migrated."""
    import subprocess
    import sys

    code = (
        "import sys, tether, tether.cli\n"
        "heavy = ['sqlite_utils', 'ipywidgets', 'anywidget', 'asyncio', 'psutil']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        f"tether.configure(db={str(tmp_path / 'new.db')!r})\n"
        "print(len(tether.runs()), 'sqlite_utils' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    expected = [] if sys.platform.startswith("linux") else ["psutil"]
    assert first == str(expected)
    assert second == "0 True"  # migrating the new database imported sqlite-utils
