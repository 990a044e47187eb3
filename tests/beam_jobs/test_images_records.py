"""The shared image preparation and the SequenceExample layout, without Beam."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from beam_jobs import images, records
from tests.beam_jobs import fixtures
from tests.beam_jobs.conftest import parse


def test_prepare_image_resizes_to_square_rgb_in_the_configured_format():
    data = fixtures.png_bytes(12, 30, width=20)
    for fmt, pil_format in (("png", "PNG"), ("jpeg", "JPEG")):
        out = images.prepare_image(data, 8, fmt)
        with Image.open(io.BytesIO(out)) as img:
            assert (img.format, img.size, img.mode) == (pil_format, (8, 8), "RGB")
    # PNG is lossless: the decoded pixels are exactly Pillow's bilinear resize.
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(images.decode_image(images.prepare_image(data, 8, "png")), expected / 255.0)


def test_image_over_the_pixel_limit_is_refused_from_its_header():
    with pytest.raises(images.ImageError, match=r"img: 20x12 = 240 pixels exceeds dataset.max_image_pixels = 239") as e:
        images.prepare_image(fixtures.png_bytes(12, 30, width=20), 8, "png", max_pixels=239, name="img")
    assert e.value.code == "image_too_large"


def test_truncated_jpeg_is_undecodable_and_missing_file_unreadable(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, format="JPEG")
    with pytest.raises(images.ImageError, match="cannot be decoded") as e:
        images.prepare_image(buf.getvalue()[:150], 8, "jpeg")
    assert e.value.code == "image_undecodable"
    with pytest.raises(images.ImageError, match=f"image {tmp_path}/none.jpg cannot be read") as e:
        images.load_image(str(tmp_path / "none.jpg"), 8)
    assert e.value.code == "image_unreadable"


def _png16(pixels: np.ndarray) -> bytes:
    """A real 16-bit PNG (Pillow cannot write 16-bit RGB): IHDR with bit depth 16, big-endian samples."""
    import struct
    import zlib

    h, w, c = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]  # grey, grey+alpha, RGB, RGBA

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _pixels(data: bytes, size: int = 4) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(images.prepare_image(data, size, "png"))))


@pytest.mark.parametrize("channels", [1, 3], ids=["grey16", "rgb16"])
def test_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(channels):
    grey = np.array([[0, 257 * 64], [257 * 128, 65535]], np.uint16)
    pixels = np.repeat(grey[:, :, None], channels, axis=2)
    assert Image.open(io.BytesIO(_png16(pixels))).mode == ("I;16" if channels == 1 else "RGB")  # a real 16-bit file
    out = _pixels(_png16(pixels), 2)
    np.testing.assert_array_equal(out, np.repeat(np.array([[0, 64], [128, 255]], np.uint8)[:, :, None], 3, axis=2))


def test_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)  # transparent black ...
    rgba[0, 0] = [200, 10, 10, 255]  # ... but one opaque red pixel
    rgba[0, 1] = [0, 0, 200, 128]  # and one half-transparent blue one
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    out = _pixels(buf.getvalue(), 2).astype(int)
    np.testing.assert_array_equal(out[0, 0], [200, 10, 10])
    np.testing.assert_allclose(out[0, 1], [127, 127, 227], atol=1)  # 50 % blue over white
    np.testing.assert_array_equal(out[1], [[255, 255, 255]] * 2)  # not black


@pytest.mark.parametrize("kind", ["la16", "palette_transparency", "grey_alpha"])
def test_other_transparent_kinds_are_composited_on_white(kind):
    if kind == "la16":
        data = _png16(np.stack([np.zeros((2, 2), np.uint16), np.zeros((2, 2), np.uint16)], axis=2))
    else:
        buf = io.BytesIO()
        if kind == "palette_transparency":
            img = Image.new("P", (2, 2), 0)
            img.putpalette([0, 0, 0] * 256)
            img.save(buf, format="PNG", transparency=0)
        else:
            Image.fromarray(np.zeros((2, 2, 2), np.uint8), mode="LA").save(buf, format="PNG")
        data = buf.getvalue()
    np.testing.assert_array_equal(_pixels(data, 2), np.full((2, 2, 3), 255, np.uint8))


def test_pixel_limit_is_the_config_not_pillows_own_bomb_limit():
    # Pillow's global limit (warn above 89 M pixels, refuse above 179 M) would overrule
    # dataset.max_image_pixels both ways; importing beam_jobs.images switches it off.
    import warnings

    assert Image.MAX_IMAGE_PIXELS is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = images.prepare_image(fixtures.png_bytes(12, 30, width=20), 8, "png", max_pixels=240)
    assert Image.open(io.BytesIO(out)).size == (8, 8)


def test_pixel_limit_is_checked_before_any_pixel_is_decoded(monkeypatch):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("decoded before the header check")

    data = fixtures.png_bytes(12, 30, width=20)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    with pytest.raises(images.ImageError, match="exceeds dataset.max_image_pixels = 239"):
        images.prepare_image(data, 8, "png", max_pixels=239, name="img")


def test_undecodable_image_reason_has_no_object_repr():
    with pytest.raises(images.ImageError) as e:
        images.prepare_image(b"not an image at all", 8, "png", name="ads/x.png")
    assert str(e.value) == "ads/x.png cannot be decoded: cannot identify image file"
    assert " at 0x" not in str(e.value)


def test_invalid_image_format_argument_is_rejected():
    with pytest.raises(ValueError, match="Received: image_format='gif'"):
        images.prepare_image(b"", 8, "gif")


def test_sequence_example_holds_the_ad_in_context_and_impressions_as_steps():
    ds = fixtures.config().dataset
    ad = ("ad1", "shoes", "/x.png", b"PIXELS", ("shoes", None, 9.5))
    imps = [(1, 3, "u1", ("u1", "ios", ("a", "b"), 2.0), (0.25,)), (0, 4, "u2", ("u2", None, (), None), (None,))]
    ex = parse(records.make_sequence_example(ad, imps, chunk_index=2, impression_count=7, ds=ds))
    ctx = ex.context.feature
    assert ctx["image"].bytes_list.value == [b"PIXELS"] and ctx["category"].bytes_list.value == [b"shoes"]
    assert ctx["chunk_index"].int64_list.value == [2] and ctx["impression_count"].int64_list.value == [7]
    assert ctx["price"].float_list.value == [9.5] and list(ctx["brand"].bytes_list.value) == [b""]  # missing: ""
    lists = ex.feature_lists.feature_list
    assert sorted(lists) == ["day", "device", "interests", "label", "position", "true_ctr", "user_id"]
    assert [f.int64_list.value[0] for f in lists["label"].feature] == [1, 0]
    assert [list(f.bytes_list.value) for f in lists["interests"].feature] == [[b"a", b"b"], []]
    assert [list(f.bytes_list.value) for f in lists["device"].feature] == [[b"ios"], [b""]]
    positions = [list(f.float_list.value) for f in lists["position"].feature]
    assert positions[0] == [2.0] and len(positions[1]) == 1 and np.isnan(positions[1][0])  # missing: NaN


def test_serialisation_is_deterministic_and_shuffle_key_depends_on_seed():
    ds = fixtures.config().dataset
    ad = ("ad1", "shoes", "/x.png", b"P", ("shoes", "b", 1.0))
    imp = (1, 3, "u1", ("u1", "ios", ("a",), 2.0), (0.5,))
    assert records.make_sequence_example(ad, [imp], 0, 1, ds) == records.make_sequence_example(ad, [imp], 0, 1, ds)
    assert records.shuffle_key(0, imp) == records.shuffle_key(0, imp) != records.shuffle_key(1, imp)
    assert [len(c) for c in records.chunks(list(range(7)), 3)] == [3, 3, 1]


def _tf_reference(ad, impressions, chunk_index, impression_count, ds) -> bytes:
    """The same chunk built with TensorFlow's protobuf classes (the format's definition)."""
    import tensorflow as tf

    def feature(kind, v):
        if kind == "numeric":
            return tf.train.Feature(float_list=tf.train.FloatList(value=[float("nan") if v is None else v]))
        if kind == "multi":
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.encode() for x in v]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"" if v is None else v.encode()]))

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    ex = tf.train.SequenceExample()
    ctx = ex.context.feature
    ctx["ad_id"].CopyFrom(feature("categorical", ad[0]))
    ctx["image"].bytes_list.value.append(ad[3])
    ctx["category"].CopyFrom(feature("categorical", ad[1]))
    ctx["impression_count"].CopyFrom(ints(impression_count))
    ctx["chunk_index"].CopyFrom(ints(chunk_index))
    for f, v in zip(ds.ad_features, ad[4], strict=True):
        if f.name not in ctx:
            ctx[f.name].CopyFrom(feature(f.kind, v))
    lists = ex.feature_lists.feature_list
    for imp in impressions:
        lists["label"].feature.append(ints(imp[0]))
        lists["day"].feature.append(ints(imp[1]))
        lists["user_id"].feature.append(feature("categorical", imp[2]))
        for f, v in zip(ds.impression_features, imp[3], strict=True):
            if f.name != "user_id":
                lists[f.name].feature.append(feature(f.kind, v))
        for name, v in zip(ds.passthrough, imp[4], strict=True):
            lists[name].feature.append(feature("numeric", v))
    return ex.SerializeToString(deterministic=True)


def test_hand_written_encoder_gives_tensorflows_deterministic_bytes():
    ds = fixtures.config().dataset
    rng = np.random.default_rng(0)
    for trial in range(20):
        ad = (f"ad{trial}", "chaussures é", "/x.png", bytes(rng.integers(0, 256, int(rng.integers(0, 300)), np.uint8)),
              ("chaussures é", None if trial % 3 == 0 else f"b{trial}", float(rng.normal() * 1e3)))
        imps = []
        for i in range(int(rng.integers(1, 6))):
            interests = tuple(f"i{j}" for j in range(int(rng.integers(0, 3))))
            position = None if i == 2 else float(rng.normal() * 10 ** int(rng.integers(-3, 30)))
            imps.append((int(rng.integers(0, 2)), int(rng.integers(-20_000, 30_000)), f"u{i}",
                         (f"u{i}", None if i == 1 else "ios", interests, position), (None if i == 3 else 0.1,)))
        count, index = int(rng.integers(1, 10**12)), trial
        assert records.make_sequence_example(ad, imps, index, count, ds) == _tf_reference(ad, imps, index, count, ds)


def test_no_cycle_collection_pauses_the_collector_once_for_nested_and_threaded_uses():
    import gc
    import threading

    from beam_jobs import records

    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()
    seen = []

    def other() -> None:
        with records.no_cycle_collection():
            inside.set()
            release.wait(5)
            seen.append(gc.isenabled())

    t = threading.Thread(target=other)
    with records.no_cycle_collection():
        assert not gc.isenabled()
        with records.no_cycle_collection():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
        t.start()
        inside.wait(5)
    assert not gc.isenabled()  # the other thread's pause still holds
    release.set()
    t.join()
    assert seen == [False] and gc.isenabled()
    try:
        with records.no_cycle_collection():
            raise ValueError("a failing bundle")
    except ValueError:
        pass
    assert gc.isenabled()
    gc.disable()  # a collector that was off stays off
    try:
        with records.no_cycle_collection():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_relax_collector_raises_thresholds_and_restored_collector_gives_them_back():
    import gc

    from beam_jobs import records

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with records.restored_collector():
            records.relax_collector()
            assert gc.get_threshold() == records.RELAXED_THRESHOLDS
            records.relax_collector()  # every DoFn's setup calls it: the same again
            assert gc.get_threshold() == records.RELAXED_THRESHOLDS
        assert gc.get_threshold() == (700, 10, 10)
        gc.set_threshold(100_000, 5, 5)  # a user's higher threshold is never lowered
        records.relax_collector()
        assert gc.get_threshold() == (100_000, 5, 5)
        gc.set_threshold(700, 10, 10)
        try:
            with records.restored_collector():
                records.relax_collector()
                raise ValueError("a failed pipeline")
        except ValueError:
            pass
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*saved)


def test_the_preprocess_job_relaxes_the_collector_while_it_runs_and_gives_the_caller_its_own(tmp_path, monkeypatch):
    # In memory the runner runs the DoFns (and their relax_collector) in this process.
    import gc

    from beam_jobs import build_tfrecords, records
    from tests.beam_jobs import fixtures

    seen = []
    real = records.relax_collector

    def spy() -> None:
        real()
        seen.append(gc.get_threshold())

    monkeypatch.setattr(records, "relax_collector", spy)
    ads, imps = fixtures.make_rows(num_ads=4, num_impressions=30, days=3)
    paths = fixtures.write_raw(str(tmp_path / "raw"), ads, imps)
    config = fixtures.write_config(str(tmp_path / "config.yaml"), k=4)
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        build_tfrecords.run(["--config", config, "--ads", paths["ads"], "--impressions", paths["impressions"],
                             "--out", str(tmp_path / "out")], verbose=False)
        after = gc.get_threshold()
    finally:
        gc.set_threshold(*saved)
    assert len(seen) >= 2 and set(seen) == {records.RELAXED_THRESHOLDS}  # validation and chunking
    assert after == (700, 10, 10)
