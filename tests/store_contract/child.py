"""A process of a race: opens the backend, waits at the gate, then starts or claims; prints the
outcome as JSON. ``python -m store_contract.child BACKEND LOCATION GATE ACTION [RUN_ID]``."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

from tether.model import Owner


def main() -> None:
    name, location, gate, action = sys.argv[1:5]
    store = importlib.import_module(f"store_contract.backend_{name}").open_store(Path(location))
    owner = Owner("contract-host", os.getpid(), 1.0, f"child-{os.getpid()}")
    store.list_runs(limit=1)  # opened before the gate: the race is about the call below
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.001)
    if action == "start":
        out = store.start(
            pipeline="p",
            key="race",
            params_json='{"x":1}',
            version=None,
            phases=[],
            policy="attach",
            owner=owner,
            lease_s=60,
            gone=lambda o, lease, now: None,
        )
        print(json.dumps([out.record.id, out.created]), flush=True)
    else:
        got = store.claim(sys.argv[5], owner, 60, target="worker")
        print(json.dumps(getattr(got, "id", None)), flush=True)
    store.close()


if __name__ == "__main__":
    main()
