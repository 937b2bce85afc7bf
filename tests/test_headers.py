"""Record headers (issue 14 item 3; FORMAT.md §2, columns C5..C9): append/append_batch take them,
Record.headers / RecordBatch.headers give them back in order, through every read path, pickling,
verify, salvage and the CLI; frames without headers are unchanged (v2spec); odd inputs."""
import json
import os
import pickle

import numpy as np
import pytest

import tidelog
import v2spec

H1 = [("trace-id", b"abc"), ("é", b""), ("trace-id", b"second")]   # repeated name, kept in order


def seg_files(path):
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".seg"))


def spec_records(path):
    """Every record of the log, decoded from its segment files by v2spec alone."""
    out = []
    for p in seg_files(path):
        with open(p, "rb") as f:
            data = f.read()
        for _, fr in v2spec.frames_of(data):
            out.extend(v2spec.decode(fr))
    return out


def as_spec(h):
    return tuple((n.encode(), bytes(v)) for n, v in h)


def test_single_append_round_trip_and_spec(log_path):
    with tidelog.open(log_path) as log:
        log.append(b"v0", key=b"k", headers=dict(H1[:2]), timestamp=7)
        log.append(b"v1", headers=H1, timestamp=8)
        log.append(b"v2", headers=[], timestamp=9)          # empty: no headers
        log.append(b"v3", headers=None, timestamp=10)
        got = [(r.value.tobytes(), r.key, r.headers) for r in log.cursor()]
        assert got == [(b"v0", b"k", H1[:2]), (b"v1", None, H1), (b"v2", None, []),
                       (b"v3", None, [])]
        assert log.read(1).headers == H1
    spec = spec_records(log_path)
    assert [r.headers for r in spec] == [as_spec(H1[:2]), as_spec(H1), (), ()]
    with open(seg_files(log_path)[0], "rb") as f:
        data = f.read()
    frames = v2spec.frames_of(data)
    # byte for byte the spec's single-form frames, with HEADERS only where headers were given
    assert frames[0][1] == v2spec.single(0, v2spec.Rec(b"v0", b"k", 7, as_spec(H1[:2])))
    assert frames[1][1] == v2spec.single(1, v2spec.Rec(b"v1", None, 8, as_spec(H1)))
    assert frames[2][1] == v2spec.single(2, v2spec.Rec(b"v2", None, 9))
    assert frames[3][1] == v2spec.single(3, v2spec.Rec(b"v3", None, 10))


def test_frames_without_headers_are_unchanged(log_path):
    """A batch without headers (or with only empty ones) is the spec's frame without HEADERS."""
    vals = [b"a" * (i % 5) for i in range(20)]
    keys = [None if i % 3 == 0 else b"k%d" % i for i in range(20)]
    with tidelog.open(log_path) as log:
        log.append_batch(vals, keys=keys, timestamps=list(range(20)), headers=[None, {}] * 10)
    with open(seg_files(log_path)[0], "rb") as f:
        data = f.read()
    (pos, fr), = v2spec.frames_of(data)
    assert fr == v2spec.multi(0, [v2spec.Rec(v, k, t) for t, (v, k) in enumerate(zip(vals, keys))],
                              at=pos)


@pytest.mark.parametrize("limit", [1 << 20, 200])
def test_batch_round_trip(log_path, limit):
    """Batches mixing records with and without headers (keys, per-record timestamps), cut into
    groups of frames by a small frame limit: read back through cursors, batches, frames()."""
    n = 300
    hs = [None if i % 4 == 0 else [("n%d" % (i % 3), b"v" * (i % 7))] * (i % 3 + 1)
          for i in range(n)]
    vals = [b"x%d" % i * (i % 4) for i in range(n)]
    with tidelog.open(log_path, segment_bytes=1 << 20) as log:
        log._frame_limit = limit
        log.append_batch(vals, keys=[b"k" if i % 2 else None for i in range(n)],
                         timestamps=[i * 3 % 17 for i in range(n)], headers=hs)
        log.append_batch(np.zeros((5, 8), np.uint8))            # numpy: no headers
        want = [h or [] for h in hs] + [[]] * 5
        assert [r.headers for r in log.cursor()] == want
        assert [log.read(i).headers for i in range(n + 5)] == want
        cur = log.cursor()
        got = []
        while True:
            b = cur.read_batch(max_records=37)
            if not len(b):
                break
            assert b.headers == [r.headers for r in b]
            assert sum((f.headers for f in b.frames()), []) == b.headers
            got += b.headers
        assert got == want
        assert [r.value.tobytes() for r in log.cursor()][:n] == vals
    assert [list(r.headers) for r in spec_records(log_path)] == [list(as_spec(h)) for h in want]


def test_odd_inputs(log_path):
    big = os.urandom(1 << 20)
    many = [("h%d" % i, b"%d" % i) for i in range(20000)]
    odd = [("", b""), ("", b"x"), ("名前", "värde".encode()), ("a\0b", b"\0\xff"),
           ("\U0001F600", bytearray(b"ba")), ("mv", memoryview(b"xyz")[1:]),
           ("np", np.arange(3, dtype=np.uint8))]
    with tidelog.open(log_path, segment_bytes=8 << 20) as log:
        log.append(b"", headers=[("big", big)])
        log.append(b"v", headers=many)
        log.append(b"w", headers=odd)
        log.append_batch([b"1", b"2"], headers=[many, [("big", big)]])
        log.append(b"end")
        want_odd = [(n, bytes(v)) for n, v in odd]
        assert log.read(0).headers == [("big", big)]
        assert log.read(1).headers == many
        assert log.read(2).headers == want_odd
        assert log.read(3).headers == many and log.read(4).headers == [("big", big)]
        assert log.read(5).headers == []
        assert log.cursor().read_batch().headers == [[("big", big)], many, want_odd, many,
                                                     [("big", big)], []]


@pytest.mark.parametrize("bad, exc, words", [
    ("abc", TypeError, "headers"),
    (b"abc", TypeError, "headers"),
    (5, TypeError, "headers"),
    ({1: b"x"}, TypeError, "header name"),
    ({"a": "str"}, TypeError, "value"),
    ({"a": 3}, TypeError, "value"),
    ({"\udc80": b""}, ValueError, "UTF-8"),
    ([("a",)], ValueError, "pair"),
    ([("a", b"", b"")], ValueError, "pair"),
    ([5], TypeError, "pair"),
])
def test_bad_headers_are_refused_and_nothing_is_appended(log_path, bad, exc, words):
    with tidelog.open(log_path) as log:
        with pytest.raises(exc, match=words):
            log.append(b"x", headers=bad)
        with pytest.raises(exc, match=r"headers\[1\]"):
            log.append_batch([b"a", b"b"], headers=[None, bad])
        assert log.end_offset == 0


def test_batch_headers_must_match_the_values(log_path):
    with tidelog.open(log_path) as log:
        with pytest.raises(ValueError, match="headers: 1 headers for 2 values"):
            log.append_batch([b"a", b"b"], headers=[None])
        with pytest.raises(TypeError, match="headers"):
            log.append_batch([b"a"], headers={"a": b"b"})        # one record's, not a list
        with pytest.raises(TypeError, match="headers"):
            log.append_batch([b"a"], headers=3)
        assert log.end_offset == 0
        log.append_batch([b"a", b"b"], headers=iter([{"x": b"1"}, None]))    # any iterable
        assert [r.headers for r in log.cursor()] == [[("x", b"1")], []]


def test_pickling_keeps_headers(log_path):
    with tidelog.open(log_path) as log:
        log.append(b"a", headers=H1)
        log.append_batch([b"b", b"c"], keys=[b"k", None], headers=[None, H1[:1]])
        log.append(b"d")
        recs = list(log.cursor())
        batch = log.cursor().read_batch()
        for r in recs:
            c = pickle.loads(pickle.dumps(r))
            assert c == r and c.headers == r.headers
        b2 = pickle.loads(pickle.dumps(batch))
        assert b2.headers == batch.headers == [H1, [], H1[:1], []]
        assert [r.headers for r in b2] == batch.headers
        assert sum((f.headers for f in b2.frames()), []) == batch.headers
    # records differing only in headers are not equal
    assert recs[0] != pickle.loads(pickle.dumps(recs[0]).replace(b"trace-id", b"trace-xx"))


def test_bad_pickled_headers_are_refused():
    from tidelog._core import _record_from_pickle
    with pytest.raises(TypeError, match="headers"):
        _record_from_pickle(0, 0, -1, b"v", [("a", "not bytes")])
    with pytest.raises(TypeError, match="headers"):
        _record_from_pickle(0, 0, -1, b"v", "x")


def test_headers_survive_recovery_verify_and_salvage(log_path, tmp_path):
    with tidelog.open(log_path, segment_bytes=1 << 14) as log:
        for i in range(200):
            if i % 5 == 0:
                log.append_batch([b"b%d" % i] * 3, headers=[H1, None, [("i", b"%d" % i)]])
            else:
                log.append(b"s%d" % i, headers=[("i", b"%d" % i)] if i % 2 else None)
        want = [(r.value.tobytes(), r.headers) for r in log.cursor()]
    # an unclean stop: the writer's recovery scans every frame with headers
    from test_recovery import mark_unclean
    mark_unclean(log_path)
    with tidelog.open(log_path) as log:
        assert [(r.value.tobytes(), r.headers) for r in log.cursor()] == want
    assert tidelog.verify(log_path)
    out = str(tmp_path / "salvaged")
    rep = tidelog.salvage(log_path, out)
    assert rep.records == len(want)
    with tidelog.open(out, readonly=True) as log:
        assert [(r.value.tobytes(), r.headers) for r in log.cursor()] == want


def test_a_flipped_header_byte_is_damage(log_path):
    with tidelog.open(log_path) as log:
        log.append(b"value", headers=[("name", b"hvalue")])
    p = seg_files(log_path)[0]
    with open(p, "r+b") as f:
        data = f.read()
        at = data.index(b"hvalue")
        f.seek(at)
        f.write(b"H")
    with tidelog.open(log_path, readonly=True) as log:
        with pytest.raises(tidelog.CorruptLogError):
            log.read(0)
    assert not tidelog.verify(log_path)


def test_cli_prints_headers_compactly(log_path):
    from click.testing import CliRunner
    from tidelog.cli import cli
    with tidelog.open(log_path) as log:
        log.append(b"plain", key=b"k")
        log.append(b"v", headers=[("a", b"1"), ("b", b"\xff")])
    r = CliRunner().invoke(cli, ["tail", log_path])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split("\t")[-1] == "plain" and len(lines[0].split("\t")) == 4
    assert lines[1].split("\t")[-2:] == ["v", "a=1;b=\\xff"]
    r = CliRunner().invoke(cli, ["dump", "--format", "json", log_path])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.output.splitlines()]
    assert "headers" not in rows[0]
    assert rows[1]["headers"] == [["a", "1", "utf-8"], ["b", "/w==", "base64"]]


# --- pack_exact (the fast path for exact (str, bytes) tuples) against the general path -------

from hypothesis import given, settings, strategies as st  # noqa: E402


class S(str):
    pass


class B(bytes):
    pass


_name = st.one_of(st.text(max_size=6), st.sampled_from(["\ud800", "é", "", "tidelog-x"]))
_value = st.one_of(st.binary(max_size=8), st.sampled_from([b"", b"\0\xff"]))
_pair = st.tuples(_name, _value, st.sampled_from(["exact", "exact", "exact", "S", "B", "list"]))


def _outcome(log, headers):
    try:
        log.append(b"v", headers=headers)
    except (TypeError, ValueError) as e:
        return type(e), str(e)
    return log.read(log.end_offset - 1).headers


@settings(max_examples=300, deadline=None)
@given(st.lists(_pair, max_size=12), st.sampled_from(["list", "tuple", "dict"]))
def test_exact_pairs_give_what_the_general_path_gives(tmp_path_factory, pairs, outer):
    """The same headers as exact tuples (pack_exact) and as lists (the general path): the same
    headers read back, or the same error; str/bytes subclasses and lone surrogates mixed in."""
    def shaped(as_lists):
        out = []
        for n, v, kind in pairs:
            n2 = S(n) if kind == "S" else n
            v2 = B(v) if kind == "B" else v
            out.append([n2, v2] if as_lists or kind == "list" else (n2, v2))
        if outer == "tuple":
            return tuple(out)
        if outer == "dict":
            return {p[0]: p[1] for p in out}
        return out
    path = str(tmp_path_factory.mktemp("px"))
    with tidelog.open(path) as log:
        fast = _outcome(log, shaped(False))
        slow = _outcome(log, shaped(True))
        assert fast == slow
        if not isinstance(fast, tuple):
            want = [(n, v) for n, v, _ in pairs]
            if outer == "dict":
                want = list(dict(want).items())
            assert fast == want
            batch = [shaped(False), None, shaped(True)]
            log.append_batch([b"a", b"b", b"c"], headers=batch)
            assert [r.headers for r in log.cursor(start=log.end_offset - 3)] == [want, [], want]


@pytest.mark.parametrize("shape", ["tuple", "list"])
def test_headers_past_a_record_are_refused_before_any_copy(log_path, shape):
    """65 references to one 64 MiB value: 4 GiB of headers, refused as the general path
    refuses them (the same error, no 4 GiB allocated), and a bad pair after them too."""
    big = b"\0" * (64 << 20)
    pair = ("n", big) if shape == "tuple" else ["n", big]
    with tidelog.open(log_path) as log:
        with pytest.raises(ValueError, match=r"^headers: headers larger than a record can be$"):
            log.append(b"v", headers=[pair] * 65)
        with pytest.raises(ValueError, match=r"^headers: headers larger than a record can be$"):
            log.append(b"v", headers=[pair] * 65 + [5])
        with pytest.raises(ValueError, match=r"headers\[1\]: headers larger"):
            log.append_batch([b"a", b"b"], headers=[None, (pair,) * 65])
        with pytest.raises(ValueError, match="16777217 headers"):
            log.append(b"v", headers=(("a", b""),) * ((1 << 24) + 1))
        assert log.end_offset == 0


@pytest.mark.parametrize("form", [list, tuple])
def test_headers_and_int_headers_past_the_bound_together_are_refused(log_path, form):
    """2**24 pairs (the most a record holds, FORMAT.md §2) and an int_headers column: 2**24 + 1
    headers, refused whatever the form of the pairs (was: an exact list took pack_exact with
    its own pairs counted alone, and the record was written with 2**24 + 1 headers)."""
    with tidelog.open(log_path) as log:
        with pytest.raises(ValueError, match=r"^headers\[0\]: 16777217 headers; at most "
                                             r"16777216 per record$"):
            log.append_batch([b"v"], headers=[form([("a", b"")] * (1 << 24))],
                             int_headers={"p": [7]})
        assert log.end_offset == 0


# ---- append_batch(int_headers=): a column of ints, one header per record, packed in C

INT64_EDGES = [0, 1, -1, 9, 10, 99, 100, -10, 2**31, 2**32 + 1, 2**63 - 1, -2**63,
               10**18, -10**18 + 1]


@pytest.mark.parametrize("form", ["list", "tuple", "array", "uint32", "deque"])
def test_int_headers_read_back_as_decimal_headers_after_the_records_own(log_path, form):
    """Each record gets, after its own headers (exact pairs, the general path's lists and
    bytearrays, a dict, none), one header per column in the dict's order, its value the int in
    decimal ASCII (what b"%d" gives), through every read path and the format's own decoder."""
    n = 60
    ints = [INT64_EDGES[i % len(INT64_EDGES)] * (1 if i % 3 else -1) if form != "uint32"
            else (i * 7919) % 2**32 for i in range(n)]
    ints = [max(min(v, 2**63 - 1), -2**63) for v in ints]
    import collections
    seq = {"list": lambda: ints, "tuple": lambda: tuple(ints),
           "array": lambda: np.array(ints, np.int64), "uint32": lambda: np.array(ints, np.uint32),
           "deque": lambda: collections.deque(ints)}[form]()
    own = [None, [], [("a", b"1")], [["b", bytearray(b"2")]], {"c": b"3", "d": b""},
           (("e", b"4"), ("e", b"5"))]
    hs = [own[i % len(own)] for i in range(n)]
    second = list(range(n, 0, -1))
    with tidelog.open(log_path) as log:
        log.append_batch([b"v%d" % i for i in range(n)], headers=hs,
                         int_headers={"pos": seq, "kafka-offset": second})
        log.append_batch([b"w%d" % i for i in range(n)], int_headers={"pos": seq})
        want = []
        for i in range(n):
            mine = [(k, bytes(v)) for k, v in (hs[i].items() if isinstance(hs[i], dict)
                                               else hs[i] or [])]
            want.append(mine + [("pos", b"%d" % ints[i]), ("kafka-offset", b"%d" % second[i])])
        want += [[("pos", b"%d" % v)] for v in ints]
        assert [log.read(o).headers for o in range(2 * n)] == want
        assert [r.headers for r in log.cursor()] == want
        assert log.cursor().read_batch().headers == want
    assert [list(r.headers) for r in spec_records(log_path)] == [list(as_spec(h)) for h in want]


def test_int_headers_equal_the_same_headers_given_as_pairs(log_path, tmp_path):
    """The same batch with its ints as (name, b"%d") pairs: byte-identical frames."""
    n = 257
    ints = [(i * 2654435761) % 2**40 - 2**39 for i in range(n)]
    vals = [b"x" * (i % 9) for i in range(n)]
    own = [None if i % 2 else [("h", b"%d" % i)] for i in range(n)]
    ts = list(range(1000, 1000 + n))
    with tidelog.open(log_path) as log:
        log.append_batch(vals, timestamps=ts, headers=own, int_headers={"p": ints})
    other = str(tmp_path / "pairs")
    with tidelog.open(other) as log:
        log.append_batch(vals, timestamps=ts,
                         headers=[(h or []) + [("p", b"%d" % v)] for h, v in zip(own, ints)])
    def frames(path):
        out = []
        for p in seg_files(path):
            with open(p, "rb") as f:
                out += [fr for _, fr in v2spec.frames_of(f.read())]
        return out
    mine, theirs = frames(log_path), frames(other)
    assert mine and mine == theirs


@pytest.mark.parametrize("bad, exc, words", [
    ([1, 2], TypeError, "expected a dict"),
    ("p", TypeError, "expected a dict"),
    ({1: [1, 2]}, TypeError, "header name"),
    ({"\udc80": [1, 2]}, ValueError, "UTF-8"),
    ({"p": [1]}, ValueError, "1 ints for 2 values"),
    ({"p": [1, 2, 3]}, ValueError, "3 ints for 2 values"),
    ({"p": "12"}, TypeError, "sequence of ints"),
    ({"p": b"12"}, TypeError, "sequence of ints"),
    ({"p": [1.0, 2.0]}, TypeError, "sequence of ints"),
    ({"p": [1, None]}, TypeError, "sequence of ints"),
    ({"p": [2**64, 1]}, ValueError, r"int_headers\['p'\]\[0\]: 18446744073709551616 is beyond "
                                    r"the int64 range"),
    ({"p": np.array([2**63, 1], np.uint64)}, ValueError, "int64 range"),
    ({"p": np.zeros((2, 1), np.int64)}, TypeError, "sequence of ints"),
    ({"p": 5}, TypeError, "sequence of ints"),
])
def test_bad_int_headers_are_refused_and_nothing_is_appended(log_path, bad, exc, words):
    with tidelog.open(log_path) as log:
        with pytest.raises(exc, match=words):
            log.append_batch([b"a", b"b"], int_headers=bad)
        with pytest.raises(exc, match=words):
            log.append_batch([b"a", b"b"], headers=[None, [("x", b"y")]], int_headers=bad)
        assert log.end_offset == 0
        log.append_batch([b"a", b"b"], int_headers={})                 # no columns: no headers
        assert [log.read(o).headers for o in range(2)] == [[], []]


def test_int_headers_empty_batch_and_bool_ints(log_path):
    with tidelog.open(log_path) as log:
        assert log.append_batch([], int_headers={"p": []}) == 0
        log.append_batch([b"a", b"b"], int_headers={"p": [True, 2]})   # numpy's int: 1
        assert log.read(0).headers == [("p", b"1")] and log.read(1).headers == [("p", b"2")]


@pytest.mark.parametrize("form", ["list", "tuple"])
def test_timestamp_lists_take_the_fast_path_with_numpys_outcomes(log_path, form):
    """Lists and tuples of exact ints skip numpy's conversion (appender.pxi int64_list); what
    is not one - a bool, a float, a big int, a numpy int, None - goes the numpy way. Either way
    the outcome is what a deque of the same timestamps gets (always numpy's way): the same
    timestamps read back, or the same error with nothing appended."""
    import collections
    mk = tuple if form == "tuple" else list
    cases = [[0, 1, 2**63 - 1, 12345678901234567], [-5, 6, 7, 8], [np.int64(5), 6, True, 0],
             [2**63, 1, 2, 3], [2**63 - 1, 2**63, 0, 0], [2**64, 1, 2, 3], [-2**63 - 1, 1, 2, 3],
             [1.5, 1, 2, 3], [1, 2, 3], [None, 1, 2, 3], [1, 2, 3, 4, 5]]

    def outcome(log, ts):
        try:
            first = log.append_batch([b"c"] * 4, timestamps=ts)
        except (TypeError, ValueError) as e:
            return type(e), str(e)
        return [log.read(o).timestamp for o in range(first, first + 4)]
    with tidelog.open(log_path) as log:
        for ts in cases:
            end = log.end_offset
            want = outcome(log, collections.deque(ts))
            got = outcome(log, mk(ts))
            assert got == want, ts
            assert log.end_offset == end + (0 if isinstance(want, tuple) else 8)
        assert outcome(log, mk([0, 1, 2**63 - 1, 5])) == [0, 1, 2**63 - 1, 5]


def test_header_marks():
    """_core.header_marks (a bridge's look at a batch of client-library headers, in C): 1 for a
    None value, 2 for the name asked, 3 for any other form, 0 for neither - and the caller's
    lists untouched."""
    from tidelog._core import header_marks
    name = "tidelog-timestamp"
    assert header_marks([], name) == 0
    assert header_marks([None, [], [("a", b"1"), ("b", b"")]], name) == 0
    assert header_marks([[("a", b"1")], [("b", None)]], name) == 1
    assert header_marks([None, [("a", b"1"), (name, b"5")]], name) == 2
    assert header_marks([[(name, None)]], name) == 3
    assert header_marks([[("a", None)], [("x" + name, b"1"), (name[:-1], b"")]], name) == 1
    # a name equal but not the same object, and non-ASCII names
    assert header_marks([[("".join(name), b"1"), ("ä", b"")]], name) == 2
    assert header_marks([[("ä", b"1")]], "ä") == 2
    for odd in ([("a", b"1")], [{"a": b"1"}], [(("a", b"1"),)], [[("a", b"1", b"2")]],
                [[("a",)]], [[["a", b"1"]]], [[(b"a", b"1")]], [[(1, b"1")]], [7]):
        assert header_marks(odd, name) == 3, odd
    raw = [[("a", None)], None]
    header_marks(raw, name)
    assert raw == [[("a", None)], None]
    with pytest.raises(TypeError):
        header_marks((["a"],), name)
    with pytest.raises(TypeError):
        header_marks(None, name)
    with pytest.raises(TypeError):
        header_marks([], None)


def test_lists_of_pairs_pack_from_the_list_or_its_copy(log_path):
    """append_batch's headers as lists: exact (str, bytes) tuples pack from the list itself
    (pack_exact), any other form (a list pair, a bytearray or memoryview value, a list
    subclass, a non-UTF-8 name) through the copy and the general path, mixed in one batch, each
    record's headers as given."""
    class L(list):
        pass
    hs = [[("a", b"1"), ("b", b"")], [["c", b"2"]], [("d", bytearray(b"3"))],
          L([("e", b"4")]), [("f", memoryview(b"56")[1:])], [("ä", b"\xff")], [], None,
          [("g", b"7")] * 300]
    with tidelog.open(log_path) as log:
        log.append_batch([b"v"] * len(hs), headers=hs, int_headers={"p": range(len(hs))})
        with pytest.raises(ValueError, match=r"headers\[1\]\[1\].*UTF-8"):
            log.append_batch([b"v", b"w"], headers=[[("a", b"1")], [("b", b"1"),
                                                                     ("\ud800", b"x")]])
        assert log.end_offset == len(hs)
        got = [log.read(i).headers for i in range(len(hs))]
    want = [[("a", b"1"), ("b", b"")], [("c", b"2")], [("d", b"3")], [("e", b"4")],
            [("f", b"6")], [("ä", b"\xff")], [], [], [("g", b"7")] * 300]
    assert got == [w + [("p", b"%d" % i)] for i, w in enumerate(want)]


@pytest.mark.parametrize("form", ["list", "tuple", "deque", "array"])
def test_ints_beyond_int64_are_named_as_such(log_path, form):
    """Timestamps or int_headers that are ints, one beyond the int64 range (numpy converts
    them to objects, or to floats when the others fit): a ValueError naming the int and its
    index, nothing appended (was: "expected a sequence of ints", of a sequence of ints)."""
    import collections
    mk = {"list": list, "tuple": tuple, "deque": collections.deque,
          "array": lambda x: np.array(x, dtype=object)}[form]
    cases = [([1, 2**63], 1, 2**63), ([2**64, 1], 0, 2**64), ([-1, 2**63], 1, 2**63),
             ([5, -2**63 - 1], 1, -2**63 - 1), ([0, 2**70], 1, 2**70), ([1.5, 2**70], 1, 2**70)]
    with tidelog.open(log_path) as log:
        for ints, i, bad in cases:
            with pytest.raises(ValueError, match=rf"^timestamps\[{i}\]: {bad} is beyond the "
                                                 rf"int64 range$"):
                log.append_batch([b"a", b"b"], timestamps=mk(ints))
            with pytest.raises(ValueError, match=rf"^int_headers\['p'\]\[{i}\]: {bad} is "
                                                 rf"beyond the int64 range$"):
                log.append_batch([b"a", b"b"], int_headers={"p": mk(ints)})
        with pytest.raises(TypeError, match="sequence of ints"):
            log.append_batch([b"a", b"b"], timestamps=mk([1.5, 2]))
        assert log.end_offset == 0
