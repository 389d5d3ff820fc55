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
