"""``smcheck kernel TARGET``: run the probe suite on a cross-entropy implementation (parse,
import the target, run :func:`smcheck.kernel.kernel`, render, exit code)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any, NoReturn

import click

from ..errors import UsageError
from ..kernel import FRAMEWORKS, JUDGES, PROBES, kernel, load_target, target_files
from ..render.common import safe_text
from ..render.kernel import RENDERERS, render, to_dict
from . import cli
from .linear_mode import refuse_given
from .options import (
    FiniteFloatRange,
    color_option,
    emit,
    exit_code,
    format_option,
    output_option,
    wants_color,
)
from .tail import Tail, finish

#: kernel's options that ``--linear`` has no use for: a linear kernel is torch's signature
#: (the others - --vocab, --rows, --seed, --device, --judge... - go to the plain probes it also
#: runs; the linear probes fix their own shapes and seeds and run on the CPU).
KERNEL_NOT_LINEAR = ("framework",)
#: kernel's options that only the plain probes read (with --linear, the plain-suite part).
KERNEL_PLAIN_ONLY = (
    "vocab", "quick", "rows", "seed", "device", "judge", "gate", "max_loss_ulp", "max_grad_err",
)  # fmt: skip


def _ints(value: str | None, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what}: expected comma-separated integers, got {value!r}") from None
    if not out:
        raise UsageError(f"{what}: no value given")
    return out


def _judge(judge: str, gate: str | None) -> str:
    """``--judge``, or the deprecated ``--gate`` it replaces (a note on stderr)."""
    if gate is None:
        return judge
    given = click.get_current_context().get_parameter_source("judge")
    if given is not click.core.ParameterSource.DEFAULT and judge != gate:
        raise UsageError("--gate is the deprecated name of --judge: give only --judge")
    click.echo(
        "smcheck: --gate is deprecated and will be removed in the next release; use --judge "
        f"{safe_text(gate)} (--gate means a list of methods in the other commands)",
        err=True,
    )
    return gate


@cli.command("kernel")
@click.argument("target")
@click.option(
    "--framework",
    type=click.Choice(list(FRAMEWORKS)),
    default=None,
    help="The kernel's framework. Default: detected from what it returns on a tiny batch.",
)
@click.option(
    "--dtype",
    "dtypes",
    metavar="LIST",
    default=None,
    help="Comma-separated working dtypes the logits are given in. Default: float32,bfloat16 "
    "(numpy: float32).",
)
@click.option(
    "--vocab",
    metavar="LIST",
    default=None,
    help="Comma-separated vocabulary sizes. Default: 1000,32000,50257,65537,128256,151936.",
)
@click.option("--quick", is_flag=True, help="Small vocabulary sizes only (10,1000,4099).")
@click.option(
    "--rows",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per probe (fewer than 6 are raised to 6). Default: 2**19 / V within [6, 64].",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**64 - 1),
    default=0,
    show_default=True,
    help="Seed of the probes' rows.",
)
@click.option(
    "--device",
    default=None,
    help="torch: where the tensors are made (cpu, cuda, cuda:1...). The reference always "
    "runs on the host.",
)
@click.option(
    "--probes",
    metavar="LIST",
    default="all",
    show_default=True,
    help=f"Comma-separated probes to run ({', '.join(PROBES)}), or all.",
)
@click.option(
    "--judge",
    type=click.Choice(list(JUDGES)),
    default="either",
    show_default=True,
    help="How a probe passes: within the reference thresholds, no worse than the framework's "
    "stock cross-entropy (+4 ulps), either, or both.",
)
@click.option("--gate", type=click.Choice(list(JUDGES)), default=None, hidden=True)
@click.option(
    "--max-loss-ulp",
    type=FiniteFloatRange(min=0),
    default=None,
    help="Loss error limit in ulps of max(|loss|, 1). Default: as smcheck eval, "
    "4 + R(V) * eps(accum) / eps(dtype) (R: the roundings of the class sum), plus ceil(log2 N) "
    "for a reduced loss.",
)
@click.option(
    "--max-grad-err",
    type=FiniteFloatRange(min=0),
    default=None,
    help="Gradient error limit (max over entries). Default: the loss limit times eps(dtype).",
)
@format_option(tuple(RENDERERS))
@output_option()
@color_option()
@click.option(
    "--exit-zero", is_flag=True, help="Exit 0 even when a probe fails (a bad target exits 2)."
)
@click.option(
    "--linear",
    is_flag=True,
    help="TARGET is a fused linear cross-entropy with F.linear_cross_entropy's signature "
    "(torch): run the linear probes, and the plain probes with each probe's logits given "
    "exactly as h W^T (docs/linear.md).",
)
def kernel_cmd(
    target: str,
    framework: str | None,
    dtypes: str | None,
    vocab: str | None,
    quick: bool,
    rows: int | None,
    seed: int,
    device: str | None,
    probes: str,
    judge: str,
    gate: str | None,
    max_loss_ulp: float | None,
    max_grad_err: float | None,
    fmt: str,
    output: str | None,
    color: str,
    exit_zero: bool,
    linear: bool,
) -> None:
    """Audit a cross-entropy implementation by running it: TARGET is module:function or
    path/to/file.py:function, with torch.nn.functional.cross_entropy's interface
    fn(logits, labels, **options) -> loss (options it does not accept are skipped probes).

    Each probe (accuracy at several scales, confident and wrong rows, a large offset, rows
    with different maxima, odd vocabulary sizes, -inf padding, ignore_index, reductions,
    label smoothing, input mutation, determinism, batch independence, NaN rows) compares the
    kernel's loss and gradient with the high-precision reference on the same rounded logits,
    next to the framework's stock cross-entropy. TARGET is imported and run: it is your code.
    Exit status: 0 every probe passes, 1 one fails, 2 bad target or usage, 3 internal error.

    Example: smcheck kernel mykernels.py:fused_ce --quick --format markdown
    """
    chosen = _chosen(probes)
    if linear:  # before TARGET is imported
        refuse_given(KERNEL_NOT_LINEAR, "does not apply to --linear: a linear kernel is torch's")
        if chosen is not None and not set(chosen) & set(PROBES):
            # no plain probe asked for: its options would be silently ignored
            refuse_given(KERNEL_PLAIN_ONLY, "applies to the plain probes, and --probes names none")
    tail = Tail("kernel", fmt, color, output, [target.rpartition(":")[0]], exit_zero=exit_zero)
    tail.start()
    judged = _judge(judge, gate)
    # the target is the user's code: what it prints while imported or called goes to stderr,
    # never into the report on stdout (-f json)
    with contextlib.redirect_stdout(sys.stderr):
        fn = load_target(target)
        # ``-o mykernels.py`` must not replace the kernel's own source, however it was named
        tail = dataclasses.replace(tail, inputs=(*tail.inputs, *target_files(fn)))
        tail.start()
        if linear:
            plain = {
                "vocab": _ints(vocab, "--vocab"), "rows": rows, "seed": seed, "device": device,
                "max_loss_ulp": max_loss_ulp, "max_grad_err": max_grad_err, "judge": judged,
                "quick": quick,
            }  # fmt: skip
            lin = _linear(fn, target, chosen, dtypes, plain)
        else:
            report = kernel(
                fn, framework=framework, dtypes=dtypes, vocab=_ints(vocab, "--vocab"), rows=rows,
                probes=probes, seed=seed, device=device, max_loss_ulp=max_loss_ulp,
                max_grad_err=max_grad_err, judge=judged, quick=quick, target=target,
            )  # fmt: skip
    # the report is written outside the redirect: it belongs on stdout (or -o), the target's
    # own prints on stderr
    if linear:
        _emit_linear(tail, lin)
    finish(tail, report, render, to_dict(report), ok=report.ok, identity={})


def _chosen(probes: str) -> list[str] | None:
    """The --probes names; None for all (also for an empty list, as the plain command)."""
    names = [p.strip() for p in probes.split(",") if p.strip()]
    return None if not names or names == ["all"] else names


def _linear(
    fn: Any, target: str, chosen: list[str] | None, dtypes: str | None, plain: dict[str, Any]
) -> Any:
    """``--linear``: the fused linear cross-entropy probes (:mod:`smcheck.linear_kernel`), and
    the plain probes through an exact embedding with the plain options ``plain``."""
    from ..linear_kernel import kernel_linear

    return kernel_linear(
        fn, target=target, probes=chosen,
        dtypes=[d.strip() for d in (dtypes or "bfloat16,float32").split(",") if d.strip()],
        plain=plain,
    )  # fmt: skip


def _emit_linear(tail: Tail, lin: Any) -> NoReturn:
    from ..render.linear import render_kernel

    text = render_kernel(lin, tail.fmt, color=wants_color(tail.color, output=tail.output))
    emit(text, tail.output, [i for i in tail.inputs if i])
    click.get_current_context().exit(exit_code(lin.ok, tail.exit_zero))
