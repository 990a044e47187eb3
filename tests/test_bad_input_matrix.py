"""The bad-input matrix (issue 13): every mistake a careless or unlucky user can make, per
stage, and the outcome docs/bad_input.md promises for it.

Each case is a named function registered with `@case(stage, name)`; one parametrised test
runs them all. The four outcomes:

* refused: exit 2 and exactly one `tfvctr <command>: error: ...` line naming the file, line
  or column and what was expected; no traceback; nothing half-written left behind;
* dead-lettered: exit 0, the row in `dead_letter/` with a readable reason (no object
  repr), counted by reason in the manifest, and the manifest's sums add up;
* warned: exit 0 and a `WARNING:` line naming the problem and the count;
* fine: exit 0 and the data right.

Serving's bad requests are tested with the server (tests/serving). Commands run
in-process (`tfvctr.cli.main`) and share a few module-scoped runs (raw tables,
a good preprocess, a 2-step model, one run per bad table), so the whole matrix takes
about two minutes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import io
import json
import os
import shutil
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.beam_jobs import fixtures

CASES: dict[str, Callable] = {}


def case(stage: str, name: str):
    def register(fn: Callable) -> Callable:
        CASES[f"{stage}-{name}"] = fn
        return fn

    return register


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str


def tfvctr(*argv: str) -> Result:
    """`tfvctr ARGV` in this process, with its exit status and output."""
    from tfvctr import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


def refused(result: Result, *fragments: str) -> str:
    """Exit 2 with one error line holding every fragment, and no traceback."""
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err and "Traceback" not in result.out, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("tfvctr ")]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def ok(result: Result) -> Result:
    assert result.code == 0, (result.code, result.out, result.err)
    assert "Traceback" not in result.err, result.err
    return result


def dead_letters(out: str) -> list[dict]:
    letters = []
    for path in sorted(glob.glob(os.path.join(out, "dead_letter", "*.jsonl"))):
        with open(path) as f:
            letters += [json.loads(line) for line in f if line.strip()]
    return letters


def manifest(out: str) -> dict:
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def sums_add_up(m: dict) -> None:
    s, d, i = m["splits"], m["dead_letter"], m["input"]
    assert i["impressions"] == sum(split["impressions"] for split in s.values()) + d["impressions"]
    assert i["ads"] == m["ads_written"] + d["ads"]
    assert sum(d["reasons"].values()) == d["ads"] + d["impressions"]


def debris(parent: str) -> list[str]:
    """Staging folders or Beam temp folders left beside or inside the outputs."""
    return [p for p in glob.glob(os.path.join(parent, "**", ".*tmp-*"), recursive=True)
            + glob.glob(os.path.join(parent, "**", "beam-temp-*"), recursive=True)]


# --------------------------------------------------------------------------- shared runs


def _append(path: str, lines: bytes) -> None:
    with open(path, "ab") as f:
        f.write(lines)


class Ctx:
    """Lazily built, shared inputs; each property runs at most once per module."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @functools.cached_property
    def config(self) -> str:
        d = fixtures.config_dict(k=4, image_size=16, max_image_pixels=64 * 64)
        d["training"] = {"steps": 2, "ads_per_batch": 4, "checkpoint_every": 2, "log_every": 1, "shuffle_buffer": 16}
        from tfvctr.config import DatasetConfig

        if "validation" in {f.name for f in dataclasses.fields(DatasetConfig)}:
            d["dataset"]["validation"] = {"mode": "none"}  # no valid split: the matrix is not about model selection
        d["model"].update(architecture="cscnn_dcn", attention="none")  # a visual tower, for embed
        path = self.path("config.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(d, f)
        return path

    def config_with(self, name: str, edit: Callable[[dict], None]) -> str:
        with open(self.config) as f:
            d = yaml.safe_load(f)
        edit(d)
        path = self.path(name)
        with open(path, "w") as f:
            yaml.safe_dump(d, f)
        return path

    @functools.cached_property
    def rows(self) -> tuple[list[dict], list[dict]]:
        return fixtures.make_rows(num_ads=8, num_impressions=60, days=3)

    @functools.cached_property
    def raw(self) -> dict:
        ads, imps = self.rows
        return fixtures.write_raw(self.path("raw"), ads, imps)

    def preprocess(self, out: str, ads: str | None = None, impressions: str | None = None, *extra: str,
                   config: str | None = None) -> Result:
        return tfvctr("preprocess", "--config", config or self.config, "--ads", ads or self.raw["ads"],
                      "--impressions", impressions or self.raw["impressions"], "--out", out, *extra)

    @functools.cached_property
    def data(self) -> str:
        out = self.path("data")
        ok(self.preprocess(out))
        return out

    @functools.cached_property
    def model(self) -> str:
        model_dir = self.path("model")
        ok(tfvctr("train", "--config", self.config, "--data", self.data, "--model-dir", model_dir))
        return model_dir

    def copy(self, src: str, name: str) -> str:
        dst = self.path(name)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        return dst

    @functools.cached_property
    def bad_csv(self) -> tuple[Result, str]:
        """One run over CSV tables holding one row of each kind of bad row."""
        root = self.path("bad_csv")
        ads, imps = self.rows
        paths = fixtures.write_raw(root, ads, imps)
        with open(os.path.join(root, "images", "corrupt.png"), "wb") as f:
            f.write(b"not an image at all")  # Pillow's message for it names a <BytesIO object at 0x...>
        Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(os.path.join(root, "images", "big.png"))
        _append(paths["ads"], (
            b"ad_missing,shoes,images/none.png,b0,1.0\n"
            b"ad_corrupt,shoes,images/corrupt.png,b0,1.0\n"
            b"ad_big,shoes,images/big.png,b0,1.0\n"
            b"ad_price,shoes,images/ad00.png,b0,free\n"
            b"ad_dup,shoes,images/ad00.png,b0,1.0\n"
            b"ad_dup,bags,images/ad01.png,b1,2.0\n"
            b"ad_bytes,sh\xffoes,images/ad00.png,b0,1.0\n"
        ))
        bad = {
            "not_utf8": b"ad00,1,0,u\xff1,ios,,1.0,0.3\n",
            "few_fields": b"ad00,1,0,u1,ios\n",
            "label_word": b"ad00,yes,0,u1,ios,,1.0,0.3\n",
            "label_two": b"ad00,2,0,u1,ios,,1.0,0.3\n",
            "day_word": b"ad00,1,someday,u1,ios,,1.0,0.3\n",
            "day_compact": b"ad00,1,20240301,u1,ios,,1.0,0.3\n",
            "user_missing": b"ad00,1,0,,ios,,1.0,0.3\n",
            "numeric_word": b"ad00,1,0,u1,ios,,abc,0.3\n",
            "numeric_inf": b"ad00,1,0,u1,ios,,inf,0.3\n",
            "passthrough_word": b"ad00,1,0,u1,ios,,1.0,high\n",
            "line_break_in_value": b'ad00,1,0,u1,"io\ns",,1.0,0.3\n',
            "unknown_ad": b"no_such_ad,1,0,u1,ios,,1.0,0.3\n",
            "rejected_ad": b"ad_price,1,0,u1,ios,,1.0,0.3\n",
            "duplicate_ad": b"ad_dup,1,0,u1,ios,,1.0,0.3\n",
            "open_quote": b'ad00,1,0,"u1,ios,,1.0,0.3\n',  # last: it swallows the end of the file
        }
        with open(paths["impressions"], "rb") as f:
            first_bad_line = f.read().count(b"\n") + 1
        self.bad_lines, line = {}, first_bad_line
        for name, text in bad.items():
            self.bad_lines[name] = line
            line += text.count(b"\n")
        _append(paths["impressions"], b"".join(bad.values()))
        out = self.path("bad_csv_out")
        return self.preprocess(out, paths["ads"], paths["impressions"]), out

    @functools.cached_property
    def bad_jsonl(self) -> tuple[Result, str]:
        root = self.path("bad_jsonl")
        ads, imps = self.rows
        paths = fixtures.write_raw(root, ads, imps, fmt="jsonl")
        with open(paths["impressions"], "a") as f:
            f.write('{"ad_id": "ad00", "label": 1,\n')
            f.write('{"ad_id": "ad00", "label": 0, "label": 1, "day": 0, "user_id": "u1", "device": "ios", '
                    '"interests": "", "position": 1.0, "true_ctr": 0.3}\n')
            f.write("[1, 2]\n")
        out = self.path("bad_jsonl_out")
        return self.preprocess(out, paths["ads"], paths["impressions"]), out

    @functools.cached_property
    def fine(self) -> tuple[Result, str, dict]:
        """Unusual but valid input: ISO dates, a BOM, CRLF line ends, blank lines, a quoted
        newline, an unused column, 16-bit, transparent, palette and CMYK images."""
        root = self.path("fine")
        ads, imps = self.rows
        ads = [dict(a, unused="x") for a in ads]
        imps = [dict(r, day=f"2024-03-0{1 + r['day']}") for r in imps]
        imps[0]["user_id"] = "u1\nx"  # a quoted field spanning two lines (user_id is hashed: no vocabulary)
        paths = fixtures.write_raw(root, ads, imps)
        images = os.path.join(root, "images")
        grey16 = np.full((20, 20), 257 * 100, np.uint16)
        Image.fromarray(grey16).save(os.path.join(images, "ad01.png"))
        rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent
        Image.fromarray(rgba, mode="RGBA").save(os.path.join(images, "ad02.png"))
        Image.new("P", (20, 20), 3).save(os.path.join(images, "ad03.png"))
        Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(os.path.join(images, "ad04.jpg"))
        with open(paths["ads"]) as f:
            text = f.read().replace("images/ad04.png", "images/ad04.jpg")
        with open(paths["ads"], "wb") as f:
            f.write(b"\xef\xbb\xbf" + text.replace("\r\n", "\n").replace("\n", "\r\n").encode())
        with open(paths["impressions"], "a") as f:
            f.write("\n\n")
        out = self.path("fine_out")
        return self.preprocess(out, paths["ads"], paths["impressions"]), out, {"ads": ads, "impressions": imps}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Ctx:
    return Ctx(str(tmp_path_factory.mktemp("matrix")))


# =========================================================================== demo-data


@case("demo-data", "zero_ads")
def _(ctx):
    refused(tfvctr("demo-data", "--out", ctx.path("d1"), "--ads", "0"), "--ads: expected a positive integer, received 0")


@case("demo-data", "fewer_impressions_than_ads")
def _(ctx):
    refused(tfvctr("demo-data", "--out", ctx.path("d2"), "--ads", "10", "--impressions", "5"),
            "--impressions: expected at least the number of ads (10)")


@case("demo-data", "one_day")
def _(ctx):
    refused(tfvctr("demo-data", "--out", ctx.path("d3"), "--days", "1"), "--days: expected an integer >= 2")


@case("demo-data", "image_size_too_small")
def _(ctx):
    refused(tfvctr("demo-data", "--out", ctx.path("d4"), "--image-size", "4"), "--image-size: expected an integer in [8,")


@case("demo-data", "negative_seed")
def _(ctx):
    refused(tfvctr("demo-data", "--out", ctx.path("d5"), "--seed", "-1"), "--seed: expected a non-negative integer")


@case("demo-data", "out_under_a_file")
def _(ctx):
    blocker = ctx.path("a_file")
    open(blocker, "w").close()
    refused(tfvctr("demo-data", "--out", os.path.join(blocker, "demo"), "--ads", "3", "--impressions", "10",
                   "--image-size", "8", "--no-progress"), "a_file")


# =========================================================================== validate-config


def _config_text(ctx, name: str, text: str) -> str:
    path = ctx.path(name)
    with open(path, "w") as f:
        f.write(text)
    return path


@case("validate-config", "missing_file")
def _(ctx):
    refused(tfvctr("validate-config", ctx.path("nope.yaml")), "nope.yaml: config file not found")


@case("validate-config", "yaml_syntax_error")
def _(ctx):
    path = _config_text(ctx, "syntax.yaml", "dataset: [unclosed\n")
    refused(tfvctr("validate-config", path), "syntax.yaml")


@case("validate-config", "unknown_top_level_key")
def _(ctx):
    path = ctx.config_with("unknown_key.yaml", lambda d: d.update(trainig={"steps": 3}))
    refused(tfvctr("validate-config", path), "unknown_key.yaml", "trainig")


@case("validate-config", "unknown_feature_kind")
def _(ctx):
    path = ctx.config_with("bad_kind.yaml", lambda d: d["dataset"]["features"][1].update(kind="onehot"))
    refused(tfvctr("validate-config", path), "dataset.features[1].kind: expected one of", "'onehot'")


@case("validate-config", "wrong_value_type")
def _(ctx):
    path = ctx.config_with("bad_type.yaml", lambda d: d["dataset"].update(image_size="big"))
    refused(tfvctr("validate-config", path), "bad_type.yaml", "dataset.image_size")


@case("validate-config", "set_unknown_key")
def _(ctx):
    refused(tfvctr("validate-config", ctx.config, "--set", "training.stepz=3"), "training.stepz")


@case("validate-config", "set_without_equals")
def _(ctx):
    refused(tfvctr("validate-config", ctx.config, "--set", "training.steps"), "training.steps")


@case("validate-config", "empty_file")
def _(ctx):
    refused(tfvctr("validate-config", _config_text(ctx, "empty.yaml", "")), "empty.yaml")


# =========================================================================== preprocess: refused before running


def _table(ctx, name: str, data: bytes) -> str:
    path = ctx.path("tables", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _impressions_bytes(ctx) -> bytes:
    with open(ctx.raw["impressions"], "rb") as f:
        return f.read().replace(b"\r\n", b"\n")  # csv.DictWriter ends lines with CRLF


@case("preprocess", "missing_ads_file")
def _(ctx):
    refused(ctx.preprocess(ctx.path("p1"), ctx.path("nope.csv")), "nope.csv: file not found")


@case("preprocess", "unknown_table_extension")
def _(ctx):
    refused(ctx.preprocess(ctx.path("p2"), _table(ctx, "ads.txt", b"ad_id\n")), "ads.txt: unknown table format '.txt'")


@case("preprocess", "missing_column")
def _(ctx):
    text = _impressions_bytes(ctx).replace(b"label,", b"clicked,", 1)
    refused(ctx.preprocess(ctx.path("p3"), None, _table(ctx, "no_label.csv", text)),
            "no_label.csv: missing column 'label' (required for the impressions table)")


@case("preprocess", "repeated_column_csv")
def _(ctx):
    lines = _impressions_bytes(ctx).split(b"\n")
    lines[0] = lines[0].replace(b"true_ctr", b"label")  # `label` twice: which one is meant?
    refused(ctx.preprocess(ctx.path("p4"), None, _table(ctx, "two_labels.csv", b"\n".join(lines))),
            "two_labels.csv: line 1: column 'label' appears twice (columns 2 and 8)")


@case("preprocess", "repeated_column_parquet")
def _(ctx):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ads, _ = ctx.rows
    path = ctx.path("tables", "ads_dup.parquet")
    pq.write_table(pa.table([pa.array([a["ad_id"] for a in ads]), pa.array([a["category"] for a in ads]),
                             pa.array([a["brand"] for a in ads])], names=["ad_id", "category", "category"]), path)
    refused(ctx.preprocess(ctx.path("p5"), path), "ads_dup.parquet: column 'category' appears twice (columns 2 and 3)")


@case("preprocess", "corrupt_parquet")
def _(ctx):
    path = _table(ctx, "broken.parquet", b"PAR1 this is not parquet")
    refused(ctx.preprocess(ctx.path("p16"), path), "broken.parquet: not a readable Parquet file (")


@case("preprocess", "semicolon_separated_csv")
def _(ctx):
    text = _impressions_bytes(ctx).replace(b",", b";")
    refused(ctx.preprocess(ctx.path("p17"), None, _table(ctx, "semicolons.csv", text)),
            "semicolons.csv: missing columns", "is the file separated by ';'? CSV tables are comma-separated")


@case("preprocess", "header_only_table")
def _(ctx):
    header = _impressions_bytes(ctx).split(b"\n")[0] + b"\n"
    refused(ctx.preprocess(ctx.path("p6"), None, _table(ctx, "header_only.csv", header)),
            "header_only.csv: no rows (only a header); expected at least one impressions row")


@case("preprocess", "empty_csv_file")
def _(ctx):
    refused(ctx.preprocess(ctx.path("p7"), _table(ctx, "empty_ads.csv", b"")),
            "empty_ads.csv: empty file; expected a header line naming the columns")


@case("preprocess", "empty_jsonl_file")
def _(ctx):
    refused(ctx.preprocess(ctx.path("p8"), None, _table(ctx, "empty.jsonl", b"\n")),
            "empty.jsonl: no rows (no records); expected at least one impressions row")


@case("preprocess", "shards_with_different_headers")
def _(ctx):
    text = _impressions_bytes(ctx)
    lines = text.split(b"\n")
    _table(ctx, "shards/imps-1.csv", text)
    cols = lines[0].split(b",")
    cols[-2], cols[-1] = cols[-1], cols[-2]
    _table(ctx, "shards/imps-2.csv", b",".join(cols) + b"\n" + b"\n".join(lines[1:]))
    refused(ctx.preprocess(ctx.path("p9"), None, ctx.path("tables", "shards", "imps-*.csv")),
            "imps-2.csv: header differs from", "every file of a table needs the same columns")


@case("preprocess", "dates_without_dashes")
def _(ctx):
    lines = _impressions_bytes(ctx).split(b"\n")
    fields = lines[1].split(b",")
    fields[2] = b"20240301"
    lines[1] = b",".join(fields)
    refused(ctx.preprocess(ctx.path("p10"), None, _table(ctx, "compact.csv", b"\n".join(lines))),
            "compact.csv: line 2: day: '20240301' looks like a date without dashes; write it 2024-03-01")


@case("preprocess", "undecodable_header")
def _(ctx):
    text = _impressions_bytes(ctx).replace(b"user_id", b"user\xe9id", 1)
    refused(ctx.preprocess(ctx.path("p11"), None, _table(ctx, "latin1.csv", text)),
            "latin1.csv: line 1: not UTF-8: byte 0xe9")


@case("preprocess", "eval_from_day_not_a_day")
def _(ctx):
    refused(ctx.preprocess(ctx.path("p12"), None, None, "--eval-from-day", "tomorrow"),
            "--eval-from-day: expected an integer or YYYY-MM-DD, received 'tomorrow'")


@case("preprocess", "out_not_empty")
def _(ctx):
    out = ctx.path("p13")
    os.makedirs(out)
    open(os.path.join(out, "keep.txt"), "w").close()
    refused(ctx.preprocess(out), "p13: not empty", "--overwrite")


@case("preprocess", "out_is_a_file")
def _(ctx):
    out = ctx.path("p14_file")
    open(out, "w").close()
    refused(ctx.preprocess(out), "p14_file")


@case("preprocess", "invalid_config")
def _(ctx):
    path = ctx.config_with("bad_k.yaml", lambda d: d["dataset"].update(impressions_per_chunk=0))
    refused(ctx.preprocess(ctx.path("p15"), config=path), "dataset.impressions_per_chunk")


# =========================================================================== preprocess: refused after the run


def _with_days(ctx, name: str, days: dict[int, str]) -> str:
    lines = _impressions_bytes(ctx).split(b"\n")
    for i, day in days.items():
        fields = lines[i].split(b",")
        fields[2] = day.encode()
        lines[i] = b",".join(fields)
    return _table(ctx, name, b"\n".join(lines))


@case("preprocess", "mixed_day_formats_leave_the_old_output")
def _(ctx):
    out = ctx.copy(ctx.data, "p20")
    before = manifest(out)
    path = _with_days(ctx, "mixed.csv", {5: "2024-01-02", 9: "2024-01-03"})
    refused(ctx.preprocess(out, None, path, "--overwrite"),
            "mixed.csv: line 6: day '2024-01-02' is an ISO date, but the table starts with day numbers (line 2)",
            "2 rows like it; use one day format per table")
    assert manifest(out) == before  # the previous output, untouched
    assert not debris(os.path.dirname(out))


@case("preprocess", "eval_from_day_after_the_data")
def _(ctx):
    refused(ctx.preprocess(ctx.path("p21"), None, None, "--eval-from-day", "9"),
            "--eval-from-day 9 is after the last day of the data: no eval impressions (the data's days are 0..2)")
    assert not os.path.exists(ctx.path("p21")) and not debris(ctx.root)


@case("preprocess", "eval_from_day_at_the_first_day")
def _(ctx):
    refused(ctx.preprocess(ctx.path("p22"), None, None, "--eval-from-day", "0"),
            "--eval-from-day 0 is not after the first day of the data: no train impressions")


@case("preprocess", "eval_from_day_date_for_day_numbers")
def _(ctx):
    refused(ctx.preprocess(ctx.path("p23"), None, None, "--eval-from-day", "2024-01-02"),
            "--eval-from-day 2024-01-02 is an ISO date, but", "writes days as day numbers")


@case("preprocess", "eval_from_day_without_dashes")
def _(ctx):
    refused(ctx.preprocess(ctx.path("p25"), None, None, "--eval-from-day", "20240301"),
            "--eval-from-day '20240301' looks like a date without dashes; write it 2024-03-01")


@case("preprocess", "every_impression_dead")
def _(ctx):
    lines = _impressions_bytes(ctx).split(b"\n")
    bad = [lines[0]] + [line.replace(b"ad", b"gone", 1) for line in lines[1:] if line]
    refused(ctx.preprocess(ctx.path("p24"), None, _table(ctx, "all_unknown.csv", b"\n".join(bad) + b"\n")),
            f"every one of the {len(bad) - 1} impressions was dead-lettered (unknown_ad {len(bad) - 1})")


# =========================================================================== preprocess: dead-lettered


def _bad_impression(ctx, name: str) -> dict:
    result, out = ctx.bad_csv
    ok(result)
    line = ctx.bad_lines[name]
    found = [d for d in dead_letters(out) if d["table"] == "impressions" and f"(impressions.csv line {line})" in d["reason"]]
    assert len(found) == 1, (name, line, [d["reason"] for d in dead_letters(out)])
    assert " at 0x" not in found[0]["reason"]
    return found[0]


DEAD_IMPRESSIONS = {
    "not_utf8": "impressions: unparseable line: not UTF-8: byte 0xff at column 11",
    "few_fields": "impressions: unparseable line: malformed CSV: expected 8 fields, got 5",
    "label_word": "impressions: label: expected 0 or 1, got 'yes'",
    "label_two": "impressions: label: expected 0 or 1, got '2'",
    "day_word": "impressions: day: expected an integer or an ISO date (YYYY-MM-DD), got 'someday'",
    "day_compact": "impressions: day: '20240301' looks like a date without dashes; write it 2024-03-01",
    "user_missing": "impressions: user_id: missing value",
    "numeric_word": "impressions: position: expected a number, got 'abc'",
    "numeric_inf": "impressions: position: expected a finite number, got 'inf'",
    "passthrough_word": "impressions: true_ctr: expected a number, got 'high'",
    "line_break_in_value": "impressions: device: 'io\\ns' contains a line break (vocabulary files hold one value per line)",
    "open_quote": "impressions: unparseable line: malformed CSV: unexpected end of data",
}


def _dead_impression_case(name: str, reason: str) -> None:
    @case("preprocess", f"dead_{name}")
    def _(ctx):
        assert _bad_impression(ctx, name)["reason"].startswith(reason)


for _name, _reason in DEAD_IMPRESSIONS.items():
    _dead_impression_case(_name, _reason)


def _dead_ad(ctx, ad_id: str) -> list[dict]:
    result, out = ctx.bad_csv
    ok(result)
    return [d for d in dead_letters(out) if d["table"] == "ads" and isinstance(d["row"], dict)
            and d["row"].get("ad_id") == ad_id]


@case("preprocess", "dead_missing_image")
def _(ctx):
    (d,) = _dead_ad(ctx, "ad_missing")
    assert "images/none.png cannot be read" in d["reason"] and "(ads.csv line " in d["reason"]


@case("preprocess", "dead_corrupt_image_without_repr")
def _(ctx):
    (d,) = _dead_ad(ctx, "ad_corrupt")
    assert d["reason"].startswith("ad ad_corrupt: ") and "corrupt.png cannot be decoded: cannot identify image file" in d["reason"]
    assert " at 0x" not in d["reason"] and "BytesIO" not in d["reason"]


@case("preprocess", "dead_image_over_pixel_limit")
def _(ctx):
    (d,) = _dead_ad(ctx, "ad_big")
    assert "80x80 = 6400 pixels exceeds dataset.max_image_pixels = 4096" in d["reason"]


@case("preprocess", "dead_bad_ad_field_takes_its_impressions")
def _(ctx):
    (d,) = _dead_ad(ctx, "ad_price")
    assert d["reason"].startswith("ads: price: expected a number, got 'free' (ads.csv line ")
    result, out = ctx.bad_csv
    reasons = [d["reason"] for d in dead_letters(out) if d["table"] == "impressions" and isinstance(d["row"], dict)
               and d["row"].get("ad_id") == "ad_price"]
    assert reasons == ["ad ad_price rejected: price: expected a number, got 'free'"]


@case("preprocess", "dead_duplicate_ad_id")
def _(ctx):
    assert [d["reason"] for d in _dead_ad(ctx, "ad_dup")] == ["ad_id 'ad_dup' appears 2 times in the ads table"] * 2
    result, out = ctx.bad_csv
    reasons = [d["reason"] for d in dead_letters(out) if d["table"] == "impressions" and isinstance(d["row"], dict)
               and d["row"].get("ad_id") == "ad_dup"]
    assert reasons == ["ad_id 'ad_dup' appears 2 times in the ads table"]


@case("preprocess", "dead_unknown_ad")
def _(ctx):
    result, out = ctx.bad_csv
    reasons = [d["reason"] for d in dead_letters(out) if isinstance(d["row"], dict) and d["row"].get("ad_id") == "no_such_ad"]
    assert reasons == ["unknown ad_id 'no_such_ad': not in the ads table"]


@case("preprocess", "dead_undecodable_ads_line")
def _(ctx):
    result, out = ctx.bad_csv
    found = [d for d in dead_letters(out) if d["table"] == "ads" and isinstance(d["row"], str)]
    assert len(found) == 1
    assert found[0]["reason"].startswith("ads: unparseable line: not UTF-8: byte 0xff at column 12 (save the table as UTF-8)")
    assert found[0]["row"] == "ad_bytes,sh\ufffdoes,images/ad00.png,b0,1.0"


@case("preprocess", "dead_letters_counted_and_sums_add_up")
def _(ctx):
    result, out = ctx.bad_csv
    m = manifest(out)
    sums_add_up(m)
    reasons = m["dead_letter"]["reasons"]
    assert reasons["unparseable"] == 4  # not_utf8, few_fields, open_quote, the ads line
    assert reasons["image_unreadable"] == reasons["image_undecodable"] == reasons["image_too_large"] == 1
    assert reasons["unknown_ad"] == 1 and reasons["duplicate_ad"] == 3
    assert len(dead_letters(out)) == m["dead_letter"]["ads"] + m["dead_letter"]["impressions"]


@case("preprocess", "dead_letters_warned_with_counts")
def _(ctx):
    result, out = ctx.bad_csv
    m = manifest(out)
    (line,) = [line for line in result.out.splitlines() if line.startswith("WARNING:")]
    d, i = m["dead_letter"], m["input"]
    assert line.startswith(f"WARNING: {d['ads']} of {i['ads']} ads and {d['impressions']} of {i['impressions']} "
                           f"impressions dead-lettered (")


@case("preprocess", "dead_jsonl_broken_line")
def _(ctx):
    result, out = ctx.bad_jsonl
    ok(result)
    n = len(ctx.rows[1])
    reasons = [d["reason"] for d in dead_letters(out)]
    assert any(r.startswith("impressions: unparseable line: malformed JSON: ") and r.endswith(f"(impressions.jsonl line {n + 1})")
               for r in reasons), reasons


@case("preprocess", "dead_jsonl_repeated_key")
def _(ctx):
    result, out = ctx.bad_jsonl
    n = len(ctx.rows[1])
    reasons = [d["reason"] for d in dead_letters(out)]
    assert f"impressions: unparseable line: malformed JSON: key 'label' appears twice (impressions.jsonl line {n + 2})" in reasons


@case("preprocess", "dead_jsonl_not_an_object")
def _(ctx):
    result, out = ctx.bad_jsonl
    n = len(ctx.rows[1])
    m = manifest(out)
    sums_add_up(m)
    assert m["dead_letter"]["reasons"] == {"unparseable": 3}
    assert (f"impressions: unparseable line: malformed JSON: expected an object, got list (impressions.jsonl line {n + 3})"
            in [d["reason"] for d in dead_letters(out)])


# =========================================================================== preprocess: fine


def _fine(ctx) -> tuple[Result, str, dict]:
    result, out, rows = ctx.fine
    ok(result)
    return result, out, rows


def _ad_image(out: str, ad_id: str) -> np.ndarray:
    from tests.beam_jobs.conftest import parse, read_records

    for split in ("train", "eval"):
        for record in read_records(out, split):
            ex = parse(record)
            if ex.context.feature["ad_id"].bytes_list.value[0].decode() == ad_id:
                return np.asarray(Image.open(io.BytesIO(ex.context.feature["image"].bytes_list.value[0])))
    raise AssertionError(f"no record of {ad_id}")


@case("preprocess", "fine_iso_dates_printed_as_dates")
def _(ctx):
    result, out, _ = _fine(ctx)
    m = manifest(out)
    assert m["day_format"] == "iso"
    assert "days [2024-03-01, 2024-03-02]" in result.out and "days [2024-03-03]" in result.out, result.out
    assert "19783" not in result.out


@case("preprocess", "fine_bom_crlf_blank_lines_and_quoted_newline")
def _(ctx):
    result, out, rows = _fine(ctx)
    m = manifest(out)
    sums_add_up(m)
    assert m["input"] == {"ads": len(rows["ads"]), "impressions": len(rows["impressions"])}
    assert m["dead_letter"]["ads"] == m["dead_letter"]["impressions"] == 0
    assert not [line for line in result.out.splitlines() if line.startswith("WARNING:")]


@case("preprocess", "fine_16_bit_png_scaled_not_white")
def _(ctx):
    _, out, _ = _fine(ctx)
    pixels = _ad_image(out, "ad01")
    assert abs(int(pixels.mean()) - 100) <= 1  # 257 * 100 of 65535 is 100 of 255, not 255


@case("preprocess", "fine_transparent_png_on_white")
def _(ctx):
    _, out, _ = _fine(ctx)
    assert _ad_image(out, "ad02").min() == 255  # fully transparent: the white background, not black


@case("preprocess", "fine_palette_and_cmyk_images")
def _(ctx):
    _, out, _ = _fine(ctx)
    assert _ad_image(out, "ad03").shape == (16, 16, 3)
    cmyk = _ad_image(out, "ad04").reshape(-1, 3).mean(axis=0)
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60  # C=0 M=255 Y=255 is red


@case("preprocess", "fine_rerun_with_overwrite_replaces_atomically")
def _(ctx):
    out = ctx.copy(ctx.data, "p30")
    open(os.path.join(out, "stale.txt"), "w").close()
    ok(ctx.preprocess(out, None, None, "--overwrite"))
    assert not os.path.exists(os.path.join(out, "stale.txt")) and os.path.exists(os.path.join(out, "manifest.json"))
    assert not debris(os.path.dirname(out))


# =========================================================================== train


@case("train", "zero_steps")
def _(ctx):
    refused(tfvctr("train", "--config", ctx.config, "--data", ctx.data, "--model-dir", ctx.path("t1"), "--steps", "0"),
            "--steps: expected a positive number of steps, received 0")


@case("train", "data_dir_missing")
def _(ctx):
    refused(tfvctr("train", "--config", ctx.config, "--data", ctx.path("nowhere"), "--model-dir", ctx.path("t2")),
            "nowhere/train: no TFRecord shards")


@case("train", "data_from_another_config")
def _(ctx):
    path = ctx.config_with("other_feature.yaml", lambda d: d["dataset"]["features"][1].update(name="platform"))
    refused(tfvctr("train", "--config", path, "--data", ctx.data, "--model-dir", ctx.path("t3")),
            "no vocabulary file for feature(s) platform")


@case("train", "model_dir_is_a_file")
def _(ctx):
    blocker = ctx.path("t4_file")
    open(blocker, "w").close()
    refused(tfvctr("train", "--config", ctx.config, "--data", ctx.data, "--model-dir", blocker), "t4_file: is a file")


@case("train", "into_a_dir_of_another_architecture")
def _(ctx):
    model_dir = ctx.copy(ctx.model, "t5")
    refused(tfvctr("train", "--config", ctx.config, "--data", ctx.data, "--model-dir", model_dir, "--steps", "4",
                   "--set", "model.deep_layers=[16]", "--set", "model.architecture=deepctr"),
            "t5: was trained on something else: model.architecture: 'cscnn_dcn' → 'deepctr'", "model.deep_layers: [8] → [16]",
            "train into a new --model-dir")


@case("train", "into_a_dir_of_other_features")
def _(ctx):
    model_dir = ctx.copy(ctx.model, "t6")
    path = ctx.config_with("bigger_emb.yaml", lambda d: d["dataset"]["features"][1].update(embedding_dim=8))
    refused(tfvctr("train", "--config", path, "--data", ctx.data, "--model-dir", model_dir, "--steps", "4"),
            "feature 'device' embedding_dim: 4 → 8")


@case("train", "truncated_checkpoint")
def _(ctx):
    model_dir = ctx.copy(ctx.model, "t7")
    (data_file,) = glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-2.data-*"))
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    refused(tfvctr("train", "--config", ctx.config, "--data", ctx.data, "--model-dir", model_dir, "--steps", "4"),
            "checkpoints/ckpt-2: checkpoint unreadable", "delete ckpt-2.*")


@case("train", "freeze_without_pretrained")
def _(ctx):
    refused(tfvctr("train", "--config", ctx.config, "--data", ctx.data, "--model-dir", ctx.path("t8"),
                   "--set", "training.freeze_cnn=true"), "training.freeze_cnn: a frozen CNN needs training.pretrained_cnn")


@case("train", "resume_with_other_training_values_is_fine")
def _(ctx):
    model_dir = ctx.copy(ctx.model, "t9")
    ok(tfvctr("train", "--config", ctx.config, "--data", ctx.data, "--model-dir", model_dir, "--steps", "2",
              "--set", "training.learning_rate=0.5"))
    with open(os.path.join(model_dir, "fingerprint.json")) as f:
        assert json.load(f)["model"]["deep_layers"] == [8]


# =========================================================================== evaluate


def _data_with(ctx, name: str, edit: Callable[[dict], None]) -> str:
    out = ctx.copy(ctx.data, name)
    m = manifest(out)
    edit(m["config"]["dataset"])
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(m, f)
    return out


@case("evaluate", "model_dir_missing")
def _(ctx):
    refused(tfvctr("evaluate", "--model-dir", ctx.path("no_model"), "--data", ctx.data),
            "no_model: no such model dir")


@case("evaluate", "training_never_finished")
def _(ctx):
    model_dir = ctx.copy(ctx.model, "e1")
    os.remove(os.path.join(model_dir, "model.keras"))
    refused(tfvctr("evaluate", "--model-dir", model_dir, "--data", ctx.data),
            "e1: training never finished: last checkpoint at step 2; run `tfvctr train` again to resume")


@case("evaluate", "data_lacks_a_model_feature")
def _(ctx):
    data = _data_with(ctx, "e2", lambda ds: ds.update(features=[f for f in ds["features"] if f["name"] != "brand"]))
    refused(tfvctr("evaluate", "--model-dir", ctx.model, "--data", data),
            "e2: does not fit model", "it lacks feature 'brand' the model was trained on")


@case("evaluate", "data_of_another_image_size")
def _(ctx):
    data = _data_with(ctx, "e3", lambda ds: ds.update(image_size=32))
    refused(tfvctr("evaluate", "--model-dir", ctx.model, "--data", data), "its images are 32 px, the model's 16 px")


@case("evaluate", "vocabulary_changed_under_the_model")
def _(ctx):
    data = ctx.copy(ctx.data, "e4_data")
    model_dir = ctx.copy(ctx.model, "e4_model")
    with open(os.path.join(model_dir, "data_dir.txt"), "w") as f:
        f.write(data)
    with open(os.path.join(data, "vocab", "device.txt"), "a") as f:
        f.write("new_device\n")
    refused(tfvctr("evaluate", "--model-dir", model_dir, "--data", data),
            "the vocabularies the model was trained with changed since (vocabularies differ: device)")


@case("evaluate", "data_with_other_vocabularies_warns")
def _(ctx):
    data = ctx.copy(ctx.data, "e5")
    with open(os.path.join(data, "vocab", "brand.txt"), "a") as f:
        f.write("brand_new\n")
    result = ok(tfvctr("evaluate", "--model-dir", ctx.copy(ctx.model, "e5_model"), "--data", data))
    (line,) = [line for line in result.err.splitlines() if line.startswith("WARNING:")]
    assert "e5's vocabularies differ from the model's (brand)" in line and "count as unknown" in line


@case("evaluate", "baseline_missing_keeps_old_metrics")
def _(ctx):
    model_dir = ctx.copy(ctx.model, "e6")
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        f.write('{"auc": 0.5}')
    refused(tfvctr("evaluate", "--model-dir", model_dir, "--data", ctx.data, "--baseline", ctx.path("nobase.json")),
            "nobase.json: baseline metrics file not found")
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert f.read() == '{"auc": 0.5}'
    assert not debris(model_dir)


@case("evaluate", "baseline_not_json")
def _(ctx):
    path = _config_text(ctx, "base.json", "{auc: nope")
    refused(tfvctr("evaluate", "--model-dir", ctx.copy(ctx.model, "e7"), "--data", ctx.data, "--baseline", path),
            "base.json: not valid JSON")


@case("evaluate", "data_dir_without_eval_split")
def _(ctx):
    data = ctx.copy(ctx.data, "e8")
    shutil.rmtree(os.path.join(data, "eval"))
    refused(tfvctr("evaluate", "--model-dir", ctx.model, "--data", data), "e8/eval: no TFRecord shards")


# =========================================================================== embed


@case("embed", "model_dir_missing")
def _(ctx):
    refused(tfvctr("embed", "--model", ctx.path("no_model"), "--data", ctx.data, "--out", ctx.path("x1")),
            "no_model: no such model dir")


@case("embed", "training_never_finished")
def _(ctx):
    model_dir = ctx.copy(ctx.model, "x2")
    for name in ("model.keras", "visual_tower.keras"):
        os.remove(os.path.join(model_dir, name))
    refused(tfvctr("embed", "--model", model_dir, "--data", ctx.data, "--out", ctx.path("x2_out")),
            "training never finished: last checkpoint at step 2; run `tfvctr train` again to resume")


@case("embed", "data_of_another_image_size")
def _(ctx):
    data = _data_with(ctx, "x3", lambda ds: ds.update(image_size=32))
    refused(tfvctr("embed", "--model", ctx.model, "--data", data, "--out", ctx.path("x3_out")),
            "its images are 32 px, the model's 16 px")


@case("embed", "model_without_a_visual_tower")
def _(ctx):
    model_dir = ctx.copy(ctx.model, "x5")
    os.remove(os.path.join(model_dir, "visual_tower.keras"))
    refused(tfvctr("embed", "--model", model_dir, "--data", ctx.data, "--out", ctx.path("x5_out")),
            "x5: no visual_tower.keras: the model has no visual tower to embed with")


@case("embed", "data_lacks_a_model_feature")
def _(ctx):
    data = _data_with(ctx, "x4", lambda ds: ds.update(features=[f for f in ds["features"] if f["name"] != "device"]))
    refused(tfvctr("embed", "--model", ctx.model, "--data", data, "--out", ctx.path("x4_out")),
            "it lacks feature 'device'")


# =========================================================================== export


@case("export", "model_dir_missing")
def _(ctx):
    refused(tfvctr("export", "--model-dir", ctx.path("no_model"), "--table", ctx.path("no_table"), "--out",
                   ctx.path("s1")), "no_model: no such model dir")


@case("export", "training_never_finished")
def _(ctx):
    model_dir = ctx.copy(ctx.model, "s2")
    os.remove(os.path.join(model_dir, "model.keras"))
    refused(tfvctr("export", "--model-dir", model_dir, "--table", ctx.path("no_table"), "--out", ctx.path("s2_out")),
            "s2: training never finished: last checkpoint at step 2; run `tfvctr train` again to resume")


@case("export", "data_of_another_image_size")
def _(ctx):
    data = _data_with(ctx, "s3", lambda ds: ds.update(image_size=32))
    refused(tfvctr("export", "--model-dir", ctx.model, "--data", data, "--table", ctx.path("no_table"), "--out",
                   ctx.path("s3_out")), "its images are 32 px, the model's 16 px")


@case("export", "vocabulary_changed_under_the_model")
def _(ctx):
    data = ctx.copy(ctx.data, "s4_data")
    model_dir = ctx.copy(ctx.model, "s4_model")
    with open(os.path.join(model_dir, "data_dir.txt"), "w") as f:
        f.write(data)
    with open(os.path.join(data, "vocab", "category.txt"), "a") as f:
        f.write("new_category\n")
    refused(tfvctr("export", "--model-dir", model_dir, "--table", ctx.path("no_table"), "--out", ctx.path("s4_out")),
            "the vocabularies the model was trained with changed since (vocabularies differ: category)")


# =========================================================================== the matrix


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(ctx, name):
    CASES[name](ctx)


def test_the_matrix_covers_every_stage_with_at_least_60_cases():
    stages = {name.split("-")[0] for name in CASES}
    assert stages == {"demo", "validate", "preprocess", "train", "evaluate", "embed", "export"}
    assert len(CASES) >= 60
