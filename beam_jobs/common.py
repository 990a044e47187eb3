"""What both Beam jobs share: pipeline options, counters, dead-letter rows, small file writes."""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from tfvctr.errors import TfvctrError

NAMESPACE = "tfvctr"  # every counter of both jobs, read after the run for the summary/manifest


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


class _QuietTagWarning(logging.Filter):
    """Drops Beam 2.77's "Tags ... requested in with_outputs() but not declared" warning.

    `ParDo(...).with_outputs(...).with_exception_handling(...)` (the documented way to have
    both tagged outputs and a failure output) declares only the failure tag in its type
    hints, so Beam warns about every other tag; the outputs work, and the warning would
    be the first thing users read.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Tags %s requested in with_outputs()")


_QUIET = _QuietTagWarning()


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Options for the flags we do not own, with a safe local default.

    With no runner named, Beam 2.77 first tries the Prism runner, which downloads a binary
    (impossible on locked-down hosts), so DirectRunner is named explicitly. With
    `--direct_num_workers N > 1` the DirectRunner runs in `multi_processing` mode; its
    `multi_threading` mode lost impressions without an error in our CoGroupByKey job
    (docs/design.md), so it is refused.
    """
    if _QUIET not in logging.getLogger().filters:
        logging.getLogger().addFilter(_QUIET)
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "DirectRunner"
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_threading":
        raise TfvctrError("--direct_running_mode multi_threading loses data in CoGroupByKey jobs (docs/design.md); "
                          "use in_memory (default) or --direct_num_workers N (multi_processing)")
    if (direct.direct_num_workers or 1) > 1 and direct.direct_running_mode == "in_memory":
        direct.direct_running_mode = "multi_processing"
    return options


def read_counters(result: Any) -> dict[str, int]:
    """Counters of the `tfvctr` namespace after the run (committed where the runner has them)."""
    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        try:
            value = c.committed
        except Exception:  # some runners only report attempted values
            value = None
        if value is None:
            value = c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def dead_letter(table: str, row: Any, code: str, reason: str) -> tuple:
    """A rejected row as it crosses the pipeline: (table, row, reason code, readable reason)."""
    return (table, row, code, reason)


class FormatDeadLetter(beam.DoFn):
    """Counts each rejected row once (per table and per reason code) and formats it as JSON."""

    def process(self, element: tuple) -> Iterable[str]:
        table, row, code, reason = element
        counter(f"dead_letter_{table}").inc()
        counter(f"reason_{code}").inc()
        yield json.dumps({"table": table, "row": row, "reason": reason}, sort_keys=True, default=str)


def prepare_output(out: str, overwrite: bool, delete: bool = True) -> None:
    """Refuses a non-empty --out (an earlier run's stale shards would be read with the new
    ones), unless `overwrite`, which deletes the folder first (`delete=False`: leaves it to
    `tfvctr.io.fs.atomic_dir`, which replaces it only once the new output is complete)."""
    patterns = [FileSystems.join(out, "*"), FileSystems.join(out, "*", "*")]  # files and shards in sub-folders
    if not any(m.metadata_list for m in FileSystems.match(patterns)):
        return
    if not overwrite:
        raise TfvctrError(f"{out}: not empty (an earlier run's output?); choose another --out or pass --overwrite "
                          f"to delete it first")
    if delete:
        FileSystems.delete([out])


def write_text_file(path: str, text: str) -> None:
    """Writes one small file through Beam's filesystems (local, gs://...)."""
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


def read_text_file(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def join_path(*parts: str) -> str:
    return FileSystems.join(*parts)


# ----------------------------------------------------------------------------- run / main of a job


def runner_name(options: PipelineOptions) -> str:
    """The runner as the jobs' first progress line names it ("DirectRunner (2 processes)")."""
    all_options = options.get_all_options()
    runner = all_options["runner"]
    if runner == "DirectRunner" and (all_options.get("direct_num_workers") or 1) > 1:
        return f"DirectRunner ({all_options['direct_num_workers']} processes)"
    return str(runner)


def job_main(run: Callable[[], Any], prog: str) -> None:
    """`if __name__ == "__main__"` of a job: user errors as one line and exit 2, as `tfvctr` does."""
    import sys

    try:
        run()
    except TfvctrError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
