"""SavedModel versions loaded the way TF Serving loads them, and swapped as files appear.

Loading: TF Serving's `SavedModelBundle` is the TF1 loader (`LoadSavedModel` with the
`serve` tag into a `Session`); requests feed and fetch the tensor names that the
MetaGraph's SignatureDefs list. `SavedModelServable` does the same through
`tf.compat.v1.saved_model.loader.load`, so a model that the dev server loads is loaded
by the same code path (initialisers, asset-backed lookup tables, `saved_model_main_op`)
that TF Serving runs, and a model that only works through `tf.saved_model.load` fails
here as it would there.

Versions (`FileSystemStoragePathSource` + `AvailabilityPreservingPolicy`, TF Serving's
defaults): every `poll_seconds` the base path is listed; numeric directory names are
versions; the policy picks the aspired ones; new aspired versions are loaded (in the
watcher thread, requests keep flowing) and only then made visible; a version that is no
longer aspired is unloaded once an aspired one is available, after its in-flight
requests finish. A version that fails to load is reported in the status document (state
END with the error) and never replaces a working one; it is retried when its directory
changes (a half-written export that completes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import numpy as np

from serving.model_config import ModelSpecConfig
from serving.rest_api import CODE_NAMES, RestError, invalid

log = logging.getLogger("tfvctr.serve")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


def _status_of(exc: BaseException) -> tuple[str, str]:
    """(canonical code name, message) of an exception raised by TF or by us."""
    import tensorflow as tf

    if isinstance(exc, RestError):
        return exc.code, exc.message
    if isinstance(exc, tf.errors.OpError):
        return CODE_NAMES.get(exc.error_code, "UNKNOWN"), exc.message
    return "UNKNOWN", f"{type(exc).__name__}: {exc}"


class SavedModelServable:
    """One SavedModel version in its own graph and session (thread-safe `run`)."""

    def __init__(self, name: str, version: int, path: str):
        import tensorflow as tf

        self.name, self.version, self.path = name, version, path
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        quiet = logging.getLogger("tensorflow")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the TF1 loader's deprecation notice: TF Serving's path is deliberate here
        try:
            with self._graph.as_default():
                meta = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], path)
        except BaseException:
            self._session.close()
            raise
        finally:
            quiet.setLevel(level)
        self.signature_defs = dict(meta.signature_def)
        self._callables: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self._refs = 0
        self._idle = threading.Condition(self._lock)
        try:
            self.warmup_requests = self._warmup()
        except BaseException:
            self._session.close()
            raise

    def _warmup(self, limit: int = 1000) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests` as TF Serving does at load.

        Up to 1,000 `PredictionLog` predict requests run before the version is served, so
        its first real requests do not pay for one-off graph work; a failing one fails the
        load, as in TF Serving (the version is then never served).
        """
        import tensorflow as tf

        from tfvctr import layout
        from tfvctr.export.protos import parse_prediction_log

        path = os.path.join(self.path, layout.WARMUP_DIR, layout.WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(limit):
            signature, inputs = parse_prediction_log(bytes(record.numpy()))
            signature = signature or "serving_default"
            if signature not in self.signature_defs:
                raise invalid(f"warmup request for unknown signature {signature!r}")
            feeds = {k: (v.astype(object) if v.dtype.kind in ("S", "O") else v) for k, v in inputs.items()}
            self.run(signature, feeds, 60_000)
            count += 1
        return count

    def run(self, signature_name: str, feeds: dict[str, np.ndarray], timeout_ms: int) -> dict[str, np.ndarray]:
        """Feeds `feeds` (signature input names) and fetches every output of the signature."""
        import tensorflow as tf

        sig = self.signature_defs[signature_name]
        in_names = tuple(sorted(feeds))
        out_names = tuple(sorted(sig.outputs))
        key = (signature_name, in_names)
        fn = self._callables.get(key)
        if fn is None:
            # A callable per (signature, inputs) skips Session.run's per-call feed/fetch
            # parsing; TF Serving likewise caches its Session::Run handles.
            fn = self._session.make_callable(
                [sig.outputs[k].name for k in out_names],
                [sig.inputs[k].name for k in in_names],
                accept_options=True,
            )
            self._callables[key] = fn
        graph = self._graph
        for k in in_names:
            # Session.run's Python-side shape check; TF Serving's C++ session reports the
            # same mismatch as INVALID_ARGUMENT from the placeholder.
            t = graph.get_tensor_by_name(sig.inputs[k].name)
            if not t.shape.is_compatible_with(feeds[k].shape):
                raise invalid(
                    f"input tensor alias {k}: shape {list(feeds[k].shape)} is not compatible with the signature's {t.shape.as_list() if t.shape.rank is not None else '[?]'}"
                )
        opts = tf.compat.v1.RunOptions(timeout_in_ms=int(timeout_ms)) if timeout_ms and timeout_ms > 0 else None
        try:
            values = fn(*[feeds[k] for k in in_names], options=opts)
        except tf.errors.OpError as e:
            code, msg = _status_of(e)
            raise RestError(code, msg) from None
        except (ValueError, TypeError) as e:  # feeds Python rejects before running
            raise invalid(str(e)) from None
        return {k: np.asarray(v) for k, v in zip(out_names, values, strict=True)}

    # Reference counting: a version is closed only after its last request finishes.
    def _acquire(self) -> None:
        with self._lock:
            self._refs += 1

    def _release(self) -> None:
        with self._lock:
            self._refs -= 1
            if self._refs == 0:
                self._idle.notify_all()

    def close(self, timeout: float = 60.0) -> None:
        with self._lock:
            self._idle.wait_for(lambda: self._refs == 0, timeout=timeout)
        self._session.close()


def list_versions(base_path: str) -> dict[int, str]:
    """Numeric sub-directories of `base_path` (TF Serving ignores the others)."""
    import tensorflow as tf

    out = {}
    for entry in tf.io.gfile.listdir(base_path):
        entry = entry.rstrip("/")
        if entry.isdigit() and int(entry) < 2**63 and tf.io.gfile.isdir(os.path.join(base_path, entry)):
            out[int(entry)] = os.path.join(base_path, entry)
    return out


def _fingerprint(path: str) -> tuple:
    """Changes when a version directory is (re)written: retry a failed load then."""
    import tensorflow as tf

    items = []
    for name in ("saved_model.pb", "saved_model.pbtxt", "variables/variables.index"):
        p = os.path.join(path, name)
        try:
            st = tf.io.gfile.stat(p)
            items.append((name, st.length, st.mtime_nsec))
        except tf.errors.NotFoundError:
            items.append((name, None, None))
    return tuple(items)


def aspired_versions(spec: ModelSpecConfig, on_disk: list[int]) -> list[int]:
    """The versions the policy wants (FileSystemStoragePathSource)."""
    if spec.policy == "all":
        return sorted(on_disk)
    if spec.policy == "specific":
        return sorted(v for v in spec.versions if v in on_disk)
    return sorted(on_disk)[-spec.num_latest:]


class _Model:
    def __init__(self, spec: ModelSpecConfig):
        self.spec = spec
        self.available: dict[int, SavedModelServable] = {}  # replaced as a whole under the swap lock
        self.states: dict[int, tuple[str, str, str]] = {}  # version -> (state, error_code, error_message)
        self.failed: dict[int, tuple] = {}  # version -> fingerprint at the failed load


class ModelManager:
    """All configured models; answers `acquire` and `version_states` for `serving.rest_api`."""

    def __init__(self, specs: list[ModelSpecConfig], poll_seconds: float = 1.0, loader=SavedModelServable):
        self._models = {s.name: _Model(s) for s in specs}
        self._poll_seconds = poll_seconds
        self._loader = loader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()
        self._swap_lock = threading.Lock()  # held for a dict look-up or assignment only

    # ---------------------------------------------------------------- lookups
    def _model(self, name: str) -> _Model | None:
        return self._models.get(name)

    def _resolve_label(self, name: str, label: str) -> int:
        m = self._model(name)
        if m is None or label not in m.spec.labels:
            raise invalid(f"Unrecognized servable version label: {label}")
        return m.spec.labels[label]

    @contextlib.contextmanager
    def acquire(self, name: str, version: int | None, label: str | None):
        """The servable for (name, version | label | latest), held until the block ends."""
        if label is not None:
            version = self._resolve_label(name, label)
        m = self._model(name)
        # Look-up and reference under the swap lock: a version retired by a swap is never
        # handed out afterwards, and one handed out before is closed only after release.
        with self._swap_lock:
            available = m.available if m is not None else {}
            if version is None:
                servable = available[max(available)] if available else None
                request = f"Latest({name})"
            else:
                servable = available.get(version)
                request = f"Specific({name}, {version})"
            if servable is not None:
                servable._acquire()
        if servable is None:
            raise RestError("NOT_FOUND", f"Servable not found for request: {request}")
        try:
            yield servable
        finally:
            servable._release()

    def version_states(self, name: str, version: int | None, label: str | None) -> list[tuple[int, str, str, str]]:
        """GetModelStatusImpl: every version the server has seen, newest first.

        TF Serving's status lookup reads only the name and the version: a label in the
        path is not resolved, so `/labels/ANY` lists every version, as here.
        """
        del label
        m = self._model(name)
        states = dict(m.states) if m is not None else {}
        if not states:
            raise RestError("NOT_FOUND", f"Could not find any versions of model {name}")
        if version is not None:
            if version not in states:
                raise RestError("NOT_FOUND", f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        return [(v, *states[v]) for v in sorted(states, reverse=True)]

    def model_names(self) -> list[str]:
        return list(self._models)

    def available_versions(self, name: str) -> list[int]:
        return sorted(self._models[name].available)

    # ---------------------------------------------------------------- loading
    def poll_once(self) -> None:
        """One pass of the storage-path source and the version policy over every model."""
        with self._poll_lock:
            for m in self._models.values():
                self._poll_model(m)

    def _poll_model(self, m: _Model) -> None:
        import tensorflow as tf

        name = m.spec.name
        try:
            on_disk = list_versions(m.spec.base_path)
        except tf.errors.OpError as e:
            log.warning("model %s: cannot list base path %s: %s", name, m.spec.base_path, e.message)
            return
        aspired = aspired_versions(m.spec, list(on_disk))
        if not on_disk:
            log.warning("model %s: no versions under %s", name, m.spec.base_path)
        loaded: dict[int, SavedModelServable] = {}
        for v in aspired:
            if v in m.available:
                continue
            fp = _fingerprint(on_disk[v])
            if m.failed.get(v) == fp:
                continue  # failed before and unchanged since: do not hammer it
            m.states[v] = (LOADING, "OK", "")
            t0 = time.time()
            try:
                loaded[v] = self._loader(name, v, on_disk[v])
            except Exception as e:  # any load failure leaves the serving versions alone
                code, msg = _status_of(e)
                m.failed[v] = fp
                m.states[v] = (END, code, msg)
                log.error("model %s version %d failed to load: %s: %s", name, v, code, msg.splitlines()[0] if msg else "")
                continue
            m.failed.pop(v, None)
            m.states[v] = (AVAILABLE, "OK", "")
            log.info("model %s version %d loaded in %.1f s (%d warmup requests) from %s", name, v, time.time() - t0,
                     loaded[v].warmup_requests, on_disk[v])
        new = dict(m.available)
        new.update(loaded)
        # AvailabilityPreservingPolicy: drop versions no longer aspired only while an
        # aspired version is available; with nothing aspired at all, unload everything.
        aspired_up = [v for v in aspired if v in new]
        drop = [v for v in new if v not in aspired and (aspired_up or not aspired)]
        if not on_disk and not aspired:
            drop = list(new)
        retired = [new.pop(v) for v in drop]
        with self._swap_lock:
            m.available = new  # the swap
        for s in retired:
            m.states[s.version] = (UNLOADING, "OK", "")
            threading.Thread(target=self._unload, args=(m, s), daemon=True, name=f"unload-{name}-{s.version}").start()

    def _unload(self, m: _Model, s: SavedModelServable) -> None:
        s.close()
        m.states[s.version] = (END, "OK", "")
        log.info("model %s version %d unloaded", m.spec.name, s.version)

    def start(self) -> None:
        """Watches the base paths in a daemon thread until `stop()`."""

        def loop():
            while not self._stop.wait(self._poll_seconds):
                try:
                    self.poll_once()
                except Exception:  # keep watching; the next poll may succeed
                    log.exception("version poll failed")

        self._thread = threading.Thread(target=loop, daemon=True, name="version-watcher")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for m in self._models.values():
            for s in m.available.values():
                s.close(timeout=5)
            m.available = {}
