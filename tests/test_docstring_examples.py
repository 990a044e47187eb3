"""The `Example:` blocks of the public layers, models and the feature encoder run (doctest).

House style: a docstring example that drifted from the code is worse than none, so each
one runs here. A docstring that has an `Example:` section must hold `>>>` lines (prose
examples cannot run, so they are not allowed in these modules).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import keras
import pytest

import tfvctr.layers
import tfvctr.models

MODULES = sorted(
    {f"{pkg.__name__}.{m.name}" for pkg in (tfvctr.layers, tfvctr.models) for m in pkgutil.iter_modules(pkg.__path__)}
    | {"tfvctr.features"}
)


def _public_objects():
    """(qualified name, object, module) of every public class and function defined in MODULES."""
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module_name}.{name}", obj, module


def _cases():
    finder = doctest.DocTestFinder(recurse=False)
    cases = []
    for qualname, obj, module in _public_objects():
        doc = inspect.getdoc(obj) or ""
        tests = [t for t in finder.find(obj, qualname, module=module, globs=dict(vars(module))) if t.examples]
        if "Example:" in doc or tests:
            cases.append(pytest.param(qualname, doc, tests, id=qualname.removeprefix("tfvctr.")))
    return cases


CASES = _cases()


def test_the_public_layers_and_models_have_examples():
    with_examples = {c.values[0] for c in CASES if c.values[2]}
    # Every public Keras layer of tfvctr.layers (the house style asks for an example each).
    layers = {q for q, obj, _ in _public_objects() if q.startswith("tfvctr.layers.") and inspect.isclass(obj)
              and issubclass(obj, keras.layers.Layer)}
    assert layers and layers <= with_examples, sorted(layers - with_examples)
    # The four whose examples used to be prose (undefined names, `(N,)` outputs).
    names = {q.rsplit(".", 1)[-1] for q in with_examples}
    assert {"DCNHead", "DeepCTRHead", "VBPRHead", "FeatureEncoder"} <= names


@pytest.mark.parametrize("qualname, doc, tests", CASES)
def test_docstring_example_runs(qualname, doc, tests):
    assert tests, f"{qualname}: its `Example:` has no `>>>` lines, so it cannot run"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test, out=lambda text: print(text, end=""))
    results = runner.summarize(verbose=False)
    assert results.attempted > 0
    assert results.failed == 0, f"{qualname}: {results.failed} of {results.attempted} example lines failed (see output)"
