"""Values beyond JSON (issue 13, items 1 and 3): every listed type round-trips as a result, a
``ctx.step`` value and a ``ctx.map`` item result, in the process and in a new one that cannot
unpickle; hypothesis-generated nested values; user codecs; the opt-in pickle serializer; a value
tether cannot store fails early, naming its type and its path. See docs/values.md.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import pathlib
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tether
from helpers import values
from helpers.util import raw
from tether import codec

FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
SAMPLES = list(values.samples())


def child(env: dict[str, str], code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )


# -- every listed type -------------------------------------------------------------------------

READ_ALL = """
import json, sys
import numpy, pandas, pyarrow  # imported before pickle is blocked (they import it themselves)
import tether
from helpers import values
values.block_pickle()
expected = values.samples()
bad = []
for name, run_id in json.loads(sys.argv[1]).items():
    run = tether.get_run(run_id)
    out = run.result()
    for part in ("result", "step", "map"):
        if not values.same(out[part], expected[name]):
            bad.append(f"{name} ({part}): {out[part]!r:.200}")
    steps = run.store.checkpoints(run_id)
    if not values.same(steps["step:make"], expected[name]):
        bad.append(f"{name} (checkpoint)")
print(json.dumps({"bad": bad, "pickle_imported_by_tether": False}))
"""


def test_every_listed_type_round_trips_in_process_and_in_a_process_that_cannot_unpickle(
    db: Path, child_env: dict[str, str]
) -> None:
    expected = values.samples()
    ids = {}
    for name in SAMPLES:
        first = values.carry.start(name=name)
        with pytest.raises(tether.RunFailed, match="first attempt fails"):
            first.result(timeout=60)
        resumed = first.resume()  # the step and the map item come back from the store
        out = resumed.result(timeout=60)
        for part in ("result", "step", "map"):
            assert values.same(out[part], expected[name]), (name, part, out[part])
        again = tether.get_run(resumed.id).result()  # read again, from a fresh record
        assert values.same(again["result"], expected[name]), name
        ids[name] = resumed.id
    # the large ones live in files beside the database, the rest in the rows
    assert len(list((Path(f"{db}.artifacts")).glob("*/*"))) >= 2
    proc = child(child_env, READ_ALL, json.dumps(ids))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["bad"] == []


def test_a_pickle_is_read_only_by_a_process_that_defines_its_pipeline_with_pickle(
    db: Path, child_env: dict[str, str]
) -> None:
    """The reader of the test above would notice an unpickle: here the same check catches it in
    a process that defined the pipeline with serializer="pickle" (helpers.values.pickled); a
    process that did not is refused before anything is unpickled."""
    run = values.pickled.start()
    assert run.result(timeout=30)["p"] == values.Plain(1, 2)
    read = f"tether.get_run({run.id!r}).result()"
    opted_in = child(child_env, "import tether\nfrom helpers import values\nvalues.block_pickle()\n" + read)
    assert opted_in.returncode != 0 and "something was unpickled" in opted_in.stderr
    plain = child(
        child_env,
        "import tether\nfrom helpers.values import block_pickle\n"
        "import helpers.values as v\ntether.pipeline(name='helpers.values.pickled')(\n"
        "    v.pickled.fn)\nblock_pickle()\n" + read,
    )
    assert plain.returncode != 0 and "something was unpickled" not in plain.stderr
    assert "StoreError" in plain.stderr and "serializer='pickle'" in plain.stderr
    assert "'helpers.values.pickled'" in plain.stderr and run.id in plain.stderr
    ok = child(child_env, f"import tether\nfrom helpers import values\nprint({read})")
    assert ok.returncode == 0 and ok.stdout.strip() == "{'n': 3, 'p': Plain(1, 2)}", ok.stderr


def test_plain_json_is_stored_exactly_as_before(db: Path) -> None:
    """A JSON result keeps its canonical text (sorted keys, compact, ASCII) in the row."""

    @tether.pipeline
    def plain(ctx: tether.Context) -> Any:
        return {"b": [1, 2.5, None, True], "a": "é", "c": {"z": 1, "y": []}}

    run = plain.start()
    assert run.result(timeout=30) == {"b": [1, 2.5, None, True], "a": "é", "c": {"z": 1, "y": []}}
    assert raw(db, "SELECT result FROM runs WHERE id = ?", run.id) == [
        ('{"a":"\\u00e9","b":[1,2.5,null,true],"c":{"y":[],"z":1}}',)
    ]


def test_importing_tether_imports_no_numpy_pandas_pyarrow_or_pickle() -> None:
    code = (
        "import sys, tether\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow', 'pickle', 'decimal', 'uuid',"
        " 'zoneinfo', 'base64') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_numpy_result_is_read_by_a_process_that_never_imported_numpy_itself(
    db: Path, child_env: dict[str, str]
) -> None:
    """numpy is imported by the reader only when such a value is read, and only then."""

    @tether.pipeline
    def arr(ctx: tether.Context) -> Any:
        return {"a": np.arange(5, dtype=np.int16), "when": dt.date(2024, 1, 2)}

    run = arr.start()
    run.result(timeout=30)
    code = (
        "import sys, tether\n"
        f"run = tether.get_run({run.id!r})\n"
        "assert 'numpy' not in sys.modules\n"
        "print(run.snapshot().result_summary)\n"  # a summary needs no numpy either
        "assert 'numpy' not in sys.modules\n"
        "out = run.result()\n"
        "print(type(out['a']).__module__, out['a'].dtype, out['a'].tolist(), out['when'])"
    )
    proc = child(child_env, code)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    assert "<ndarray <i2 (5,)>" in first and "datetime.date(2024, 1, 2)" in first
    assert second == "numpy int16 [0, 1, 2, 3, 4] 2024-01-02"


# -- hypothesis ----------------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=()), max_size=8)
HASHABLE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(0, 3).map(lambda k: (-1) ** k * 10**5000 + k),
    st.floats(allow_nan=False),
    TEXT,
    st.binary(max_size=8),
    st.decimals(allow_nan=False),
    st.uuids(),
    st.dates(),
    st.timedeltas(),
    st.times(),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.builds(pathlib.PurePosixPath, TEXT.filter(lambda s: "\x00" not in s)),
)
LEAVES = st.one_of(
    HASHABLE,
    st.floats(),
    st.sets(HASHABLE, max_size=3),
    st.frozensets(HASHABLE, max_size=3),
    st.builds(bytearray, st.binary(max_size=8)),
    st.complex_numbers(),
    hnp.scalar_dtypes().flatmap(hnp.from_dtype),
    hnp.arrays(
        hnp.scalar_dtypes() | hnp.byte_string_dtypes() | hnp.unicode_string_dtypes(),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3),
    ),
)
VALUES = st.recursive(
    LEAVES,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.tuples(kids, kids)
        | st.dictionaries(TEXT, kids, max_size=4)
        | st.dictionaries(HASHABLE, kids, max_size=3)
    ),
    max_leaves=10,
)


@FUZZ
@given(value=VALUES)
def test_fuzz_nested_values_round_trip_through_the_codec_and_a_file(tmp_path: Path, value: Any) -> None:
    from tether.artifacts import Artifacts

    files = Artifacts(tmp_path / "runs.db")
    text = codec.encode(value)
    assert isinstance(text, str) and text.isascii()
    assert json.loads(text) is not None or text == "null"  # the row is JSON
    if getattr(text, "files", None):
        files.put(text.files)
    assert values.same(codec.decode(str(text), "r", "result", files), value)
    assert codec.encode(value) == text  # canonical: the same value, the same text


@settings(
    max_examples=20,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(value=VALUES)
def test_fuzz_nested_values_round_trip_as_results(db: Path, value: Any) -> None:
    token = f"v{len(_VALUES)}"
    _VALUES[token] = value
    run = returns.start(token=token)
    assert values.same(run.result(timeout=30), value)
    assert values.same(tether.get_run(run.id).result(), value)


_VALUES: dict[str, Any] = {}


@tether.pipeline
def returns(ctx: tether.Context, token: str) -> Any:
    return _VALUES[token]


# -- user codecs and pickle ----------------------------------------------------------------------


def test_register_codec_round_trips_a_user_type_here_and_in_a_process_that_registers_it(
    db: Path, child_env: dict[str, str]
) -> None:
    values.register_point()

    @tether.pipeline
    def points(ctx: tether.Context) -> Any:
        first = ctx.step("p", lambda: values.Point(1, 2))
        return {"pts": [first, values.Point(3.5, -1)], "set": frozenset({values.Point(0, 0)})}

    run = points.start()
    expected = {"pts": [values.Point(1, 2), values.Point(3.5, -1)], "set": frozenset({values.Point(0, 0)})}
    assert run.result(timeout=30) == expected
    [(stored,)] = raw(db, "SELECT result FROM runs WHERE id = ?", run.id)
    assert '"name":"tests.Point"' in stored and '"x":3.5' in stored  # readable in the row
    ok = child(
        child_env,
        "import tether\nfrom helpers import values\nvalues.register_point()\n"
        f"print(tether.get_run({run.id!r}).result()['pts'])",
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "[Point(1, 2), Point(3.5, -1)]", ok.stderr
    missing = child(child_env, f"import tether\ntether.get_run({run.id!r}).result()")
    assert missing.returncode != 0
    assert "StoreError" in missing.stderr and "'tests.Point'" in missing.stderr
    assert "register_codec" in missing.stderr and run.id in missing.stderr


def test_register_codec_refuses_types_tether_stores_and_bad_arguments() -> None:
    with pytest.raises(TypeError, match="stores datetime values itself"):
        tether.register_codec(dt.datetime, str, str)
    with pytest.raises(TypeError, match="callables"):
        tether.register_codec(values.Point, None, str)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes a class"):
        tether.register_codec(values.Point(1, 2), str, str)  # type: ignore[arg-type]


def test_a_codec_returning_its_own_type_or_raising_is_a_params_error(db: Path) -> None:
    class Loop:
        pass

    tether.register_codec(Loop, lambda obj: obj, lambda v: v, name="tests.Loop")
    with pytest.raises(tether.ParamsError, match=r"result\[0\]: .*Loop .*returned the same type"):
        codec.encode([Loop()])

    class Broken:
        pass

    tether.register_codec(Broken, lambda obj: 1 / 0, lambda v: v, name="tests.Broken")
    with pytest.raises(tether.ParamsError, match=r"result\['b'\]: .*Broken .*ZeroDivisionError"):
        codec.encode({"b": Broken()})


def test_pickle_serializer_is_opt_in_and_refuses_a_database_owned_by_another_user(
    db: Path, child_env: dict[str, str]
) -> None:
    run = values.pickled.start()
    assert run.result(timeout=30) == {"p": values.Plain(1, 2), "n": 3}
    [(stored,)] = raw(db, "SELECT result FROM runs WHERE id = ?", run.id)
    assert '"$tether":"pickle"' in stored and '"n":3' in stored  # only what needed it

    @tether.pipeline
    def not_opted_in(ctx: tether.Context) -> Any:
        return {"p": values.Plain(1, 2)}

    refused = not_opted_in.start()
    with pytest.raises(
        tether.RunFailed,
        match=r"result\['p'\]: helpers.values.Plain \(Plain\(1, 2\)\) "
        "cannot be stored",
    ):
        refused.result(timeout=30)
    with pytest.raises(tether.PipelineError, match="serializer='json'"):
        tether.pipeline(serializer="json")(lambda ctx: None)  # type: ignore[call-overload]

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to give the database file to another user")
    os.chown(db, 65534, 65534)  # nobody
    try:
        env = dict(child_env, TETHER_ALLOW_FOREIGN_DB="1")
        code = f"import tether\nimport helpers.values\ntether.get_run({run.id!r}).result()"
        proc = child(env, code)
        assert proc.returncode != 0
        assert "StoreError" in proc.stderr and "owned by another user" in proc.stderr
        assert "unpickles only what you own" in proc.stderr
        summary = child(env, f"import tether\nprint(tether.get_run({run.id!r}).snapshot().result_summary)")
        assert summary.returncode == 0 and "<pickled helpers.values.Plain>" in summary.stdout
    finally:
        os.chown(db, os.getuid(), os.getgid())


# -- fail early ----------------------------------------------------------------------------------


class Foo:
    def __repr__(self) -> str:
        return "Foo()"


class Odd(dt.tzinfo):
    """A time zone tether cannot name."""

    def utcoffset(self, d: Any) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, d: Any) -> str:
        return "odd"

    def dst(self, d: Any) -> None:
        return None


def test_step_and_map_values_tether_cannot_store_raise_at_once_naming_type_and_path(db: Path) -> None:
    seen: dict[str, str] = {}

    def bad_item(i: int) -> Any:
        return {"i": i, "rows": [1, 2, Foo()] if i == 2 else []}

    @tether.pipeline
    def reacts(ctx: tether.Context) -> Any:
        try:
            ctx.step("load", lambda: {"rows": [0, 1, 2, Foo()]})
        except tether.ParamsError as exc:
            seen["step"] = str(exc)
        try:
            ctx.map(bad_item, range(4), name="items")
        except tether.ParamsError as exc:
            seen["map"] = str(exc)
        return "reacted"

    run = reacts.start()
    assert run.result(timeout=30) == "reacted"
    assert seen["step"].startswith(
        "step 'load': value['rows'][3]: test_values.Foo (Foo()) cannot be stored"
    ), seen["step"]
    assert "register_codec" in seen["step"] and "checkpoint=False" in seen["step"]
    assert seen["map"].startswith("ctx.map(items): item 2: value['rows'][2]: test_values.Foo"), seen["map"]
    names = [n for (n,) in raw(db, "SELECT name FROM checkpoints WHERE run_id = ?", run.id)]
    assert "step:load" not in names and "map:items:2" not in names


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"rows": [1, 2, 3, Foo()]}, "result['rows'][3]: test_values.Foo (Foo())"),
        ([(1, {2: Foo()})], "result[0][1][2]: test_values.Foo"),
        ({"s": {1, Foo()}}, "result['s'] (the item Foo()): test_values.Foo"),
        ({(1, Foo()): "key"}, "result (the key (1, Foo()))[1]: test_values.Foo"),
        (np.array([1, None, "x"], dtype=object), "result: numpy.ndarray"),
        ({"t": dt.datetime(2024, 1, 1, tzinfo=Odd())}, "result['t']: test_values.Odd"),
    ],
)
def test_paths_in_messages(value: Any, path: str) -> None:
    with pytest.raises(tether.ParamsError) as info:
        codec.encode(value)
    assert str(info.value).startswith(path), str(info.value)


def test_unstorable_result_fails_the_run_keeping_checkpoints_so_resume_redoes_only_the_end(
    db: Path, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    fixed = {"yes": False}

    @tether.pipeline
    def long_job(ctx: tether.Context) -> Any:
        parts = []
        for k in range(3):
            parts.append(
                ctx.step(f"part{k}", lambda k=k: (log.open("a").write(f"part{k}\n"), np.full(3, k))[1])
            )
        return {"parts": parts, "summary": (parts[0] if fixed["yes"] else Foo())}

    run = long_job.start()
    with pytest.raises(tether.RunFailed) as info:
        run.result(timeout=30)
    assert info.value.error["type"] == "ParamsError"
    assert info.value.error["message"].startswith("result['summary']: test_values.Foo (Foo())")
    assert raw(db, "SELECT result FROM runs WHERE id = ?", run.id) == [(None,)]
    assert len(raw(db, "SELECT name FROM checkpoints WHERE run_id = ?", run.id)) == 3
    fixed["yes"] = True
    out = run.resume().result(timeout=30)
    assert log.read_text().splitlines() == ["part0", "part1", "part2"]  # no step ran again
    assert [p.tolist() for p in out["parts"]] == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    assert out["summary"].dtype == np.int64 or out["summary"].dtype == np.dtype(int)


def test_nesting_deeper_than_the_limit_names_where(db: Path) -> None:
    value: Any = 0
    for _ in range(codec.MAX_DEPTH + 5):
        value = (value,)
    with pytest.raises(tether.ParamsError, match=r"result(\[0\])+: tuple nested deeper than 200"):
        codec.encode(value)


# -- displays ------------------------------------------------------------------------------------


def test_summary_shows_values_without_reading_files(db: Path, child_env: dict[str, str]) -> None:
    @tether.pipeline
    def big(ctx: tether.Context) -> Any:
        return {
            "arr": np.zeros(500_000),
            "when": dt.date(2024, 5, 1),
            "n": 3,
            "d": decimal.Decimal("1.5"),
            "u": uuid.UUID(int=1),
            "x": math.nan,
        }

    run = big.start()
    run.result(timeout=30)
    for f in Path(f"{db}.artifacts").glob("*/*"):
        f.unlink()  # the summary must not need it
    summary = tether.get_run(run.id).snapshot().result_summary
    assert summary["arr"] == "<ndarray <f8 (500000,) in a file, 3.8 MiB>"
    assert summary["n"] == 3 and summary["when"] == "datetime.date(2024, 5, 1)"
    assert summary["x"] == "nan"
    show = subprocess.run(
        [sys.executable, "-m", "tether.cli", "show", run.id, "--db", str(db)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert show.returncode == 0, show.stderr
    assert "<ndarray <f8 (500000,) in a file, 3.8 MiB>" in show.stdout
    with pytest.raises(tether.StoreError, match="missing"):
        tether.get_run(run.id).result()


class _Marker:
    """Unpickling this creates the file it names."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_pickle_written_behind_tethers_back_is_never_unpickled(db: Path, tmp_path: Path) -> None:
    """A result row holding a pickle node, for a pipeline that did not opt in (a database from
    elsewhere, a hand edit): reading it is a StoreError and the pickle's code never runs."""
    import base64
    import pickle
    import sqlite3

    _VALUES["plain"] = {"n": 1}
    run = returns.start(token="plain")
    run.result(timeout=30)
    marker = tmp_path / "unpickled"
    payload = base64.b64encode(pickle.dumps(_Marker(str(marker)))).decode()
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE runs SET result = ? WHERE id = ?",
        (json.dumps({"$tether": "pickle", "type": "x._Marker", "b64": payload}), run.id),
    )
    conn.commit()
    conn.close()
    with pytest.raises(tether.StoreError, match="serializer='pickle'"):
        tether.get_run(run.id).result()
    assert tether.get_run(run.id).snapshot().result_summary == "<pickled x._Marker>"
    assert not marker.exists()
