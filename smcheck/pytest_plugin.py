"""pytest plugin: one test item per ``smcheck kernel`` probe of your cross-entropy kernel.

Mark a test that takes the ``smcheck_probe`` fixture with the kernel and :func:`smcheck.kernel`'s
options; the plugin parametrizes it over every (probe, dtype, vocab) the options select::

    import pytest
    from mypkg.losses import fused_cross_entropy

    @pytest.mark.smcheck_kernel(fused_cross_entropy, quick=True)
    def test_softmax_kernel(smcheck_probe):
        smcheck_probe.check()

``pytest -k softmax`` runs them all, ``pytest -k "softmax and tail"`` one probe; items are named
``test_softmax_kernel[tail-float32-1000]``. A failing probe fails its item with the probe's
detail and worst rows; a probe the kernel cannot run (an option it does not accept) is skipped.

Installed with smcheck (entry point ``pytest11``); without the entry point load it with
``-p smcheck.pytest_plugin``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .kernel import ProbeResult

# smcheck.kernel (numpy, the reference) is imported only where a test uses the marker: this
# module is loaded by every pytest run in an environment where smcheck is installed

__all__ = ["SmcheckProbe"]

MARKER = "smcheck_kernel"


@dataclass(frozen=True)
class SmcheckProbe:
    """One probe of one kernel at one dtype and vocabulary size; :meth:`check` runs it."""

    fn: Any
    name: str
    dtype: str
    vocab: int
    options: dict[str, Any]

    def check(self) -> ProbeResult:
        """Run the probe: fail with its detail and worst rows, skip when it cannot run."""
        __tracebackhide__ = True
        from .kernel import failure_message, kernel

        report = kernel(
            self.fn, dtypes=(self.dtype,), vocab=(self.vocab,), probes=(self.name,), **self.options
        )
        result = report.probes[0]
        if result.status == "skip":
            pytest.skip(f"smcheck probe {result.test_id}: {result.detail}")
        if result.status == "fail":
            pytest.fail(failure_message(report), pytrace=False)
        return result


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(fn, **options): run smcheck's kernel probes on the cross-entropy kernel fn, "
        "one test item per probe (the test takes the smcheck_probe fixture)",
    )


def _plan(fn: Any, options: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(probe, dtype, vocab) of every item, as :func:`smcheck.kernel` would run them."""
    from .kernel import DEFAULT_DTYPES, DEFAULT_VOCAB, QUICK_VOCAB, detect_framework, parse_probes

    dtypes = options.get("dtypes")
    if dtypes is None:
        framework = options.get("framework") or detect_framework(fn, options.get("device"))
        options["framework"] = framework
        dtypes = DEFAULT_DTYPES[framework]
    if isinstance(dtypes, str):
        dtypes = [d.strip() for d in dtypes.split(",") if d.strip()]
    vocab = options.get("vocab")
    if vocab is None:
        vocab = QUICK_VOCAB if options.get("quick") else DEFAULT_VOCAB
    names = parse_probes(options.get("probes", "all"))
    return [(name, d, v) for d in dtypes for v in vocab for name in names]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None or "smcheck_probe" not in metafunc.fixturenames:
        return
    if len(marker.args) != 1:
        raise pytest.UsageError(f"@pytest.mark.{MARKER} takes the kernel as its one argument")
    fn = marker.args[0]
    options = dict(marker.kwargs)
    plan = _plan(fn, options)
    for key in ("dtypes", "vocab", "probes", "quick"):
        options.pop(key, None)
    metafunc.parametrize(
        "smcheck_probe",
        [SmcheckProbe(fn, name, d, v, options) for name, d, v in plan],
        ids=[f"{name}-{d}-{v}" for name, d, v in plan],
    )


@pytest.fixture
def smcheck_probe(request: pytest.FixtureRequest) -> SmcheckProbe:
    """The probe of this item (parametrized by ``@pytest.mark.smcheck_kernel``)."""
    param = getattr(request, "param", None)
    if not isinstance(param, SmcheckProbe):
        raise pytest.UsageError(
            f"smcheck_probe needs @pytest.mark.{MARKER}(kernel, ...) on {request.node.name}"
        )
    return param
