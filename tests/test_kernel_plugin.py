"""The pytest plugin, run by pytester: one item per probe, ``-k`` selection, a failing probe's
table in the report, skips for options the kernel does not accept.

The venv's editable install predates the ``pytest11`` entry point, so the plugin is loaded
with ``-p smcheck.pytest_plugin`` (the entry point is named after the module, so that flag
stays harmless once it is installed).
"""

from __future__ import annotations

import pytest

# imported here, before pytester's snapshot of sys.modules: an inline run removes the modules
# it imported, and a C extension (ml_dtypes, torch) cannot be imported twice in one process -
# so the kernels below name their framework (detection would import torch and jax)
import smcheck.kernel  # noqa: F401
import smcheck.pytest_plugin  # noqa: F401

pytest_plugins = ["pytester"]

KERNELS = """
import numpy as np
import pytest


def good(logits, labels, reduction="mean"):
    z = logits.astype(np.float64)
    d = z - z.max(axis=1, keepdims=True)
    loss = np.log(np.exp(d).sum(axis=1)) - d[np.arange(len(labels)), labels]
    return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()


def no_shift(logits, labels):
    z = logits.astype(np.float32)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]


@pytest.mark.smcheck_kernel(good, framework="numpy", vocab=(10,),
                            probes="random,offset,reduction_sum,ignore_index")
def test_softmax_good(smcheck_probe):
    smcheck_probe.check()


@pytest.mark.smcheck_kernel(no_shift, framework="numpy", vocab=(10,), probes="first_last,offset")
def test_softmax_no_shift(smcheck_probe):
    smcheck_probe.check()
"""


def test_one_item_per_probe_failures_show_their_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kernels=KERNELS)
    res = pytester.runpytest("-p", "smcheck.pytest_plugin", "-k", "softmax", "-rs")
    # good: random, offset, reduction_sum pass, ignore_index skipped; no_shift: offset fails
    res.assert_outcomes(passed=4, failed=1, skipped=1)
    res.stdout.fnmatch_lines(
        [
            "*smcheck: 1 of 1 kernel probes failed*",
            "*offset?float32-10?: a large common offset*non-finite loss*",
            "*row*label*loss*reference*error (ulps)*",
        ]
    )
    res.stdout.fnmatch_lines(["*SKIPPED*ignore_index*does not accept ignore_index=*"])


def test_item_ids_and_k_selection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kernels=KERNELS)
    res = pytester.runpytest("-p", "smcheck.pytest_plugin", "--collect-only", "-q")
    res.stdout.fnmatch_lines(
        [
            "test_kernels.py::test_softmax_good?random-float32-10?",
            "test_kernels.py::test_softmax_good?offset-float32-10?",
            "test_kernels.py::test_softmax_no_shift?first_last-float32-10?",
            "test_kernels.py::test_softmax_no_shift?offset-float32-10?",
        ]
    )
    res = pytester.runpytest("-p", "smcheck.pytest_plugin", "-k", "softmax and random")
    res.assert_outcomes(passed=1)


def test_fixture_without_marker_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(smcheck_probe):\n    pass\n")
    res = pytester.runpytest("-p", "smcheck.pytest_plugin")
    res.assert_outcomes(errors=1)
    res.stdout.fnmatch_lines(["*smcheck_probe needs @pytest.mark.smcheck_kernel*"])
