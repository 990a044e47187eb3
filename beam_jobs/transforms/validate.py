"""`ValidateAds` and `ValidateImpressions`: typed rows keyed by ad_id, or a dead letter with a reason.

Each image is read, checked, resized and re-encoded here, once per ad (not once per chunk).
Expected problems (a missing or wrong-typed field, a broken image) leave through a
`TaggedOutput` with a readable reason naming the row's file and line; anything unexpected
is caught by `with_exception_handling` and dead-lettered too (its reason is the
exception's type and message, never an object repr), so no row disappears.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import apache_beam as beam
from apache_beam import pvalue

from beam_jobs import images, records
from beam_jobs.common import counter, dead_letter
from beam_jobs.transforms.read import SOURCE_KEY, is_row_batch, rows_of_batch
from tfvctr.config import DatasetConfig
from tfvctr.errors import readable_failure

DEAD = "dead"
REJECTED = "rejected"  # (ad_id, reason) of ads whose impressions must be dead-lettered too
GROUP_BUFFER = 100_000  # impressions a grouping `ValidateImpressions` holds before it flushes its groups


def _json_safe(row: object) -> object:
    if isinstance(row, (dict, str)):
        return row
    if isinstance(row, bytes):
        return row.decode("utf-8", "replace")
    return str(row)


def _unexpected(table: str):
    """Maps a `with_exception_handling` failure (element, (type, repr, traceback)) to a dead letter."""

    def fn(failure: tuple) -> tuple:
        element, (exc_type, exc_repr, _) = failure
        row = dict(element) if isinstance(element, dict) else element
        where = row.pop(SOURCE_KEY, None) if isinstance(row, dict) else None
        return dead_letter(table, _json_safe(row), "unexpected_error",
                           _with_source(f"{table}: unexpected {readable_failure(exc_type, exc_repr)}", where))

    return fn


def _unexpected_ad_key(failure: tuple) -> Iterable[tuple]:
    element, (exc_type, exc_repr, _) = failure
    if isinstance(element, dict) and element.get("ad_id") not in (None, ""):
        ad_id = str(element["ad_id"])
        yield (ad_id, f"ad {ad_id} rejected: unexpected {readable_failure(exc_type, exc_repr)}")


def _with_source(reason: str, where: Optional[str]) -> str:
    return f"{reason} ({where})" if where else reason


class _ValidateAd(beam.DoFn):
    def __init__(self, ds: DatasetConfig, table_path: str):
        self._ds = ds
        self._table_path = table_path

    def setup(self) -> None:
        from tfvctr.io import tables

        self._coerce = tables.RowCoercer("ads", self._ds)

    def process(self, row: dict) -> Iterable:
        from tfvctr.io import tables

        row = dict(row)
        where = row.pop(SOURCE_KEY, None)
        try:
            typed = self._coerce(row)
        except ValueError as e:
            yield pvalue.TaggedOutput(DEAD, dead_letter("ads", row, "bad_field", _with_source(f"ads: {e}", where)))
            ad_id = row.get("ad_id")
            if ad_id not in (None, ""):
                yield pvalue.TaggedOutput(REJECTED, (str(ad_id), f"ad {ad_id} rejected: {e}"))
            return
        ad_id = str(typed["ad_id"])
        uri = tables.resolve_image_path(str(typed["image"]), self._table_path)
        try:
            encoded = images.load_image(uri, self._ds.image_size, self._ds.image_format, self._ds.max_image_pixels)
        except images.ImageError as e:
            yield pvalue.TaggedOutput(DEAD, dead_letter("ads", row, e.code, _with_source(f"ad {ad_id}: {e}", where)))
            yield pvalue.TaggedOutput(REJECTED, (ad_id, f"ad {ad_id} rejected: {e}"))
            return
        typed["image"] = uri
        yield (ad_id, records.ad_from_row(typed, encoded, self._ds))


class _ValidateImpression(beam.DoFn):
    """Also counts the rows of each day format (`day_format_integer`, `day_format_iso`): a
    table must keep to one, checked after the run (`beam_jobs.checks`).

    With `grouped`, good impressions are held per ad_id and leave as `(ad_id, [impression,
    ...])`, once per ad at the end of the bundle (or when `GROUP_BUFFER` impressions are
    held, so a worker's memory stays bounded): one element per ad and bundle crosses the
    join's shuffle instead of one per impression.
    """

    def __init__(self, ds: DatasetConfig, grouped: bool = False):
        self._ds = ds
        self._grouped = grouped

    def setup(self) -> None:
        from tfvctr.io import tables

        self._coerce = tables.RowCoercer("impressions", self._ds)
        records.relax_collector()
        self._formats = {f: counter(f"day_format_{f}") for f in ("integer", "iso")}
        self._format_counts = dict.fromkeys(self._formats, 0)

    def start_bundle(self) -> None:
        self._groups: dict = {}
        self._held = 0

    def process(self, element) -> Iterable:
        if not is_row_batch(element):
            out = self._one(element, element.get(SOURCE_KEY))
            self._count_formats()
            if out is not None:
                yield out
            return
        # A row batch (`ReadTable(batch_rows=N)`): each row still succeeds or fails alone;
        # an unexpected error is dead-lettered for its row only, as `with_exception_handling`
        # does for an element.
        name = element[0]
        with records.no_cycle_collection():  # the batch's tuples make no cycles (records.no_cycle_collection)
            for line, row in rows_of_batch(element):
                try:
                    out = self._one(row, None, name, line)
                except Exception as e:
                    row = {**row, SOURCE_KEY: f"{name} line {line}"}
                    out = pvalue.TaggedOutput(DEAD, _unexpected("impressions")((row, (type(e), repr(e), None))))
                if out is not None:
                    yield out
        self._count_formats()  # once per batch: a Beam counter costs more than the row's own count
        if self._held >= GROUP_BUFFER:
            yield from self._flush(windowed=False)

    def finish_bundle(self) -> Iterable:
        yield from self._flush(windowed=True)

    def _count_formats(self) -> None:
        for day_format, n in self._format_counts.items():
            if n:
                self._formats[day_format].inc(n)
                self._format_counts[day_format] = 0

    def _flush(self, windowed: bool) -> Iterable:
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        groups, self._groups, self._held = self._groups, {}, 0
        for kv in groups.items():
            yield WindowedValue(kv, GlobalWindow().max_timestamp(), [GlobalWindow()]) if windowed else kv

    def _one(self, row: dict, where: Optional[str], name: str = "", line: int = 0) -> Optional[Any]:
        """One row → its output (`(ad_id, impression)` or a dead letter), or None when grouped."""
        try:
            typed = self._coerce(row)  # reads only the required columns: SOURCE_KEY can stay
        except ValueError as e:
            row = dict(row)
            row.pop(SOURCE_KEY, None)
            where = where or (f"{name} line {line}" if name else None)
            return pvalue.TaggedOutput(DEAD, dead_letter("impressions", row, "bad_field",
                                                         _with_source(f"impressions: {e}", where)))
        self._format_counts[self._coerce.day_format] += 1
        ad_id = str(typed["ad_id"])
        imp = records.impression_from_row(typed, self._ds)
        if not self._grouped:
            return (ad_id, imp)
        group = self._groups.get(ad_id)
        if group is None:
            self._groups[ad_id] = [imp]
        else:
            group.append(imp)
        self._held += 1
        return None


class ValidateAds(beam.PTransform):
    """Ads-table rows → `(ad_id, ad tuple)` with the image prepared once.

    Outputs a dict: `"ads"` (good ads), `"rejected"` (`(ad_id, reason)` of rejected ads, for
    their impressions) and `"dead"` (dead-letter tuples of the rejected ad rows).
    """

    def __init__(self, ds: DatasetConfig, table_path: str):
        super().__init__()
        self._ds = ds
        self._table_path = table_path

    def expand(self, rows):
        out = rows | "Validate" >> beam.ParDo(_ValidateAd(self._ds, self._table_path)).with_outputs(
            DEAD, REJECTED, main="ads").with_exception_handling(dead_letter_tag="failed")
        failed_dead = out.failed | "FailedToDead" >> beam.Map(_unexpected("ads"))
        failed_keys = out.failed | "FailedToRejected" >> beam.FlatMap(_unexpected_ad_key)
        return {
            "ads": out.ads,
            REJECTED: (out[REJECTED], failed_keys) | "Rejected" >> beam.Flatten(),
            DEAD: (out[DEAD], failed_dead) | "Dead" >> beam.Flatten(),
        }


class ValidateImpressions(beam.PTransform):
    """Impressions-table rows (or row batches, `ReadTable(batch_rows=N)`) → `(ad_id, impression
    tuple)`; outputs `"impressions"` and `"dead"`.

    With `grouped=True` the impressions come out as `(ad_id, [impression, ...])`, the
    bundle's impressions of that ad (an ad may appear in several such elements), which
    `EvalFromDay` and `JoinAndChunk` take as they take single impressions.
    """

    def __init__(self, ds: DatasetConfig, grouped: bool = False):
        super().__init__()
        self._ds = ds
        self._grouped = grouped

    def expand(self, rows):
        out = rows | "Validate" >> beam.ParDo(_ValidateImpression(self._ds, self._grouped)).with_outputs(
            DEAD, main="impressions").with_exception_handling(dead_letter_tag="failed")
        failed_dead = out.failed | "FailedToDead" >> beam.Map(_unexpected("impressions"))
        return {"impressions": out.impressions, DEAD: (out[DEAD], failed_dead) | "Dead" >> beam.Flatten()}
