"""The backends the store contract runs against: a second backend is one module
(``backend_<name>.py`` with ``open_store``, ``damage`` and ``make_old``) and one entry in
``BACKENDS``."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tether.store import Store

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(f"store_contract.backend_{request.param}")


@pytest.fixture
def location(tmp_path: Path, backend: ModuleType, request: pytest.FixtureRequest) -> Path:
    """Where the backend keeps its database (a folder of the test's own; a backend with
    ``prepare(location, request)`` makes its database there, e.g. a server's database's URL)."""
    path = tmp_path / "store"
    path.mkdir()
    prepare = getattr(backend, "prepare", None)
    if prepare is not None:
        prepare(path, request)
    return path


@pytest.fixture
def store(backend: ModuleType, location: Path) -> Iterator[Store]:
    st: Store = backend.open_store(location)
    yield st
    st.close()
