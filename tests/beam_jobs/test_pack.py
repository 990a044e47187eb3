"""`records.pack`: the join's packed impressions round-trip exactly and are compressed
(the local runners hold them about four times: docs/beam_jobs.md, memory)."""

import pickle
import threading

from beam_jobs import records


def _impressions(n: int) -> list:
    # The shape of `records.impression_from_row`: day, label, user, feature values, passthrough.
    return [(19000 + i % 7, i % 3 == 0, f"u{i % 400:05d}", ("35-44", "ios" if i % 2 else "android", str(i % 24),
                                                           float(i % 8), ("phones", "cups")[: i % 3]), (i / 997,))
            for i in range(n)]


def test_pack_round_trips_exactly():
    imps = _impressions(300) + [(0, 0, "", (None, None, None, float("inf"), ()), (-0.0,))]
    out = records.unpack(records.pack(imps))
    assert out == imps
    assert repr(out) == repr(imps)  # -0.0 == 0.0: the sign too
    assert [type(x) for imp in out for x in imp] == [type(x) for imp in imps for x in imp]


def test_pack_is_smaller_than_the_pickle():
    imps = _impressions(500)
    packed = records.pack(imps)
    raw = pickle.dumps(imps, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(packed) < len(raw) / 2, (len(packed), len(raw))


def test_pack_in_threads_round_trips():
    # A Beam worker runs bundles in threads; each keeps its own zstd (de)compressor.
    batches = [_impressions(40 + t) for t in range(8)]
    results, errors = {}, []

    def work(t: int) -> None:
        try:
            for _ in range(50):
                assert records.unpack(records.pack(batches[t])) == batches[t]
            results[t] = records.unpack(records.pack(batches[t]))
        except Exception as e:  # noqa: BLE001 - surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert results == dict(enumerate(batches))


class Tag(str):
    pass


class Ratio(float):
    pass


def test_pack_keeps_types_marshal_does_not_write():
    # A str or float subclass is refused by marshal: pack falls back to pickle, types intact.
    value = [(0, 1, Tag("u1"), (Ratio(0.5), None, ("a",)), (1.0,)), (1, 2, "u2", (0.25, "ios", ()), (None,))]
    out = records.unpack(records.pack(value))
    assert out == value
    assert type(out[0][2]) is Tag and type(out[0][3][0]) is Ratio and type(out[1][2]) is str
