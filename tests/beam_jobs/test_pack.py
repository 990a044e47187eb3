"""`records.pack`: the join's packed impressions round-trip exactly and are compressed
(the local runners hold them about four times: docs/beam_jobs.md, memory)."""

import pickle

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
