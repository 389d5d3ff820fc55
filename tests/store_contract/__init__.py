"""The store contract: what any backend of ``tether.store.Store`` must do (see conftest.py)."""
