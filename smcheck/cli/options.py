"""Click option helpers shared by the commands (eval, gradcheck, sweep, compare).

Each helper returns a decorator, so a command reads as its list of options::

    @cli.command("eval")
    @dtype_options()
    @format_option()
    @output_option()
    @color_option()
    @gate_options()
    def eval_cmd(...): ...

and :func:`emit`, :func:`exit_code` and :func:`wants_color` are what the shared command tail
(:mod:`smcheck.cli.tail`) ends every command with. Nothing here computes numbers; values are
parsed and validated, never interpreted.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import click

from ..errors import UsageError
from ..executor import cap_workers, workers_note
from ..loading import LoadedInput, load_input
from ..methods import DEFAULT_METHODS, METHODS
from ..precisions import PRECISIONS
from ..prepare import file_dtype
from ..render.common import use_color

__all__ = [
    "capped_workers",
    "FAIL_ON_CHOICES",
    "FiniteFloatRange",
    "SchedulerAddress",
    "all_inputs",
    "check_output",
    "FORMATS",
    "color_option",
    "dtype_options",
    "emit",
    "exit_code",
    "exit_zero_option",
    "format_option",
    "gate_option",
    "gate_options",
    "load_logits",
    "methods_option",
    "output_option",
    "parse_csv_choices",
    "parse_gate",
    "parse_methods",
    "progress_reporter",
    "wants_color",
    "workers_option",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Every report format a command may offer (a command may offer a subset).
FORMATS: tuple[str, ...] = ("table", "json", "markdown", "github", "junit")

#: Checks that ``--fail-on`` can turn into failures.
FAIL_ON_CHOICES: tuple[str, ...] = ("overflow", "underflow", "nonfinite")


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Apply click decorators so that ``--help`` lists them in the order given."""

    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def parse_csv_choices(value: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``, each checked against ``allowed`` (order kept, no repeats).

    ``""`` and ``"none"`` give ``()``. Raises :class:`UsageError` naming the bad item.

    >>> parse_csv_choices("overflow, nonfinite", FAIL_ON_CHOICES, "--fail-on")
    ('overflow', 'nonfinite')
    """
    items = [v.strip().lower() for v in value.split(",") if v.strip()]
    if items == ["none"]:
        return ()
    out: list[str] = []
    for item in items:
        if item not in allowed:
            expected = ", ".join(allowed)
            raise UsageError(f"{what}: unknown value {item!r}; expected one of: {expected}")
        if item not in out:
            out.append(item)
    return tuple(out)


def parse_methods(value: str, what: str = "--methods") -> tuple[str, ...]:
    """Method list: names from ``METHODS`` or the framework methods (``torch``, ``jax``),
    ``default`` (the default set) or ``all`` (every core method); in registry order.

    >>> parse_methods("fused,naive")
    ('naive', 'fused')
    >>> parse_methods("all") == tuple(METHODS)
    True
    """
    from ..frameworks import FRAMEWORK_METHODS

    known = (*METHODS, *FRAMEWORK_METHODS)
    chosen: set[str] = set()
    for item in (v.strip().lower() for v in value.split(",") if v.strip()):
        if item == "all":
            chosen.update(METHODS)
        elif item == "default":
            chosen.update(DEFAULT_METHODS)
        elif item in known:
            chosen.add(item)
        else:
            raise UsageError(
                f"{what}: unknown method {item!r}; expected one of: {', '.join(known)}, "
                "default, all"
            )
    return tuple(m for m in known if m in chosen)


def dtype_options(
    default_help: str = "the file's float dtype (float32 for text)",
) -> Callable[[F], F]:
    """``--dtype``, ``--accum``, ``--cast``: the working precision and how inputs are rounded."""
    names = ", ".join(PRECISIONS)
    return _compose(
        click.option(
            "--dtype",
            metavar="DTYPE",
            default=None,
            help=f"Working precision ({names}; aliases f16, bf16, fp8...). "
            f"Default: {default_help}.",
        ),
        click.option(
            "--accum",
            metavar="DTYPE",
            default=None,
            help="Accumulation dtype of the sums over classes. Default: float32 for 16/8-bit "
            "types, else the working dtype.",
        ),
        click.option(
            "--cast",
            "cast_mode",
            type=click.Choice(["ieee", "saturate"]),
            default="ieee",
            show_default=True,
            help="How logits are rounded to the working dtype: overflow to inf, or clamp to +-max.",
        ),
    )


def methods_option(default: str = ",".join(DEFAULT_METHODS)) -> Callable[[F], F]:
    """``--methods LIST`` (comma-separated; ``all`` adds every registered method)."""
    return click.option(
        "--methods",
        metavar="LIST",
        default=default,
        show_default=True,
        help=f"Comma-separated formulations to run ({', '.join(METHODS)}; 'all' runs every one; "
        "'torch', 'jax' run the frameworks if installed).",
    )


def format_option(choices: Sequence[str] = FORMATS, default: str = "table") -> Callable[[F], F]:
    """``--format`` / ``-f``: which pure renderer turns the report into text."""
    return click.option(
        "--format",
        "-f",
        "fmt",
        type=click.Choice(list(choices)),
        default=default,
        show_default=True,
        help="Report format.",
    )


def output_option() -> Callable[[F], F]:
    """``--output`` / ``-o FILE``: write the report there atomically instead of to stdout."""
    return click.option(
        "--output",
        "-o",
        metavar="FILE",
        default=None,
        help="Write the report to FILE (atomically; never onto an input file) instead of stdout.",
    )


def color_option() -> Callable[[F], F]:
    """``--color auto|always|never`` (auto: NO_COLOR beats FORCE_COLOR beats 'is a terminal')."""
    return click.option(
        "--color",
        type=click.Choice(["auto", "always", "never"]),
        default="auto",
        show_default=True,
        help="Colour the table: auto follows NO_COLOR, then FORCE_COLOR, then whether the output "
        "is a terminal.",
    )


def capped_workers(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Option callback: at most the CPUs this process may use, with a one-line note on stderr
    when more were asked for (not 100 forked processes on 2 cores)."""
    if value is None:
        return None
    note = workers_note(value, f"--{param.name}")
    if note:
        click.echo(f"smcheck: note: {note}", err=True)
    return cap_workers(value)


def workers_option() -> Callable[[F], F]:
    """``--workers N``: parallel workers for row chunks (see :func:`smcheck.engine.run`)."""
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        callback=capped_workers,
        help="Row chunks processed in parallel: forked worker processes on Linux, threads "
        "elsewhere (and with --methods torch/jax). Default: the number of CPU cores.",
    )


class FiniteFloatRange(click.FloatRange):
    """A float range that refuses NaN and inf: ``v > nan`` is always False, so a NaN threshold
    would pass every value and silently switch its check off (and inf likewise)."""

    name = "finite float"

    def _describe_range(self) -> str:
        # click describes an unbounded range as "x<=None"; say nothing more than "finite"
        if self.min is None and self.max is None:
            return ""
        return super()._describe_range()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


def label_smoothing_option(help: str) -> Callable[[F], F]:
    """``--label-smoothing EPS`` in [0, 1] (PyTorch's label_smoothing), with the command's help."""
    return click.option(
        "--label-smoothing",
        type=click.FloatRange(0, 1),
        default=0.0,
        show_default=True,
        metavar="EPS",
        help=help,
    )


def variant_options(smoothing: bool = True) -> Callable[[F], F]:
    """``--z-loss``, ``--softcap``, ``--logit-scale``, ``--smoothing-convention``: the loss
    variant checked (:mod:`smcheck.variants`; the library validates the values). Commands
    without label smoothing (sweep) take ``smoothing=False``: no convention to choose."""
    conv = click.option(
        "--smoothing-convention",
        type=click.Choice(["torch", "megatron"]),
        default="torch",
        show_default=True,
        help="Label smoothing over all C classes (torch) or the other C-1 (megatron).",
    )
    return _compose(
        *((conv,) if smoothing else ()),
        click.option(
            "--logit-scale",
            type=FiniteFloatRange(),
            default=1.0,
            show_default=True,
            help="Multiply the logits by this first (a temperature's inverse, 1/sqrt(d)...).",
        ),
        click.option(
            "--softcap",
            type=FiniteFloatRange(),
            default=None,
            help="Then cap them as c*tanh(z/c) (Gemma's logit soft-capping; c > 0).",
        ),
        click.option(
            "--z-loss",
            type=FiniteFloatRange(min=0.0),
            default=0.0,
            show_default=True,
            help="Add this times (log-sum-exp)^2 to each row's loss (PaLM's z-loss).",
        ),
    )


def gate_option(
    default: str = "fused",
    help: str = "Comma-separated methods whose failure fails the run (exit 1); 'none' gates "
    "nothing, 'all' every method run.",
) -> Callable[[F], F]:
    """``--gate LIST``: which methods decide the exit status (see :func:`parse_gate`)."""
    return click.option("--gate", metavar="LIST", default=default, show_default=True, help=help)


def exit_zero_option() -> Callable[[F], F]:
    """``--exit-zero``: findings are reported, never failed on (bad input still exits 2)."""
    return click.option(
        "--exit-zero",
        is_flag=True,
        help="Exit 0 even when a gated check fails (bad input still exits 2).",
    )


class SchedulerAddress(click.ParamType):
    """A Dask scheduler address, ``scheme://host:port`` with a scheme distributed speaks.

    Checked before any work: ``garbage://x`` is a usage error, not an internal one after the
    input was loaded.
    """

    name = "address"
    SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "tcp", text  # distributed's default: "host:port"
        if scheme not in self.SCHEMES or not rest or not rest.isprintable() or len(text) > 300:
            from ..config import clip

            self.fail(
                f"{clip(repr(text), 80)} is not a scheduler address (scheme://host:port, "
                f"scheme one of {', '.join(self.SCHEMES)})",
                param,
                ctx,
            )
        return text


def gate_options(
    default_gate: str = "fused", default_fail_on: str = "overflow,nonfinite"
) -> Callable[[F], F]:
    """The CI gate: ``--gate``, ``--max-loss-ulp``, ``--max-grad-err``, ``--fail-on``,
    ``--exit-zero``. Threshold defaults are None: the analysis picks them per dtype."""
    return _compose(
        gate_option(default_gate),
        click.option(
            "--max-loss-ulp",
            type=FiniteFloatRange(min=0),
            default=None,
            help="Largest loss error a gated method may have, in ulps of max(|loss|, 1) of the "
            "working dtype. Default: 4 + R * eps(accum) / eps(dtype), R the roundings of the "
            "class sum (docs/eval.md).",
        ),
        click.option(
            "--max-grad-err",
            type=FiniteFloatRange(min=0),
            default=None,
            help="Largest absolute gradient error (max over entries) a gated method may have. "
            "Default: the loss budget times eps(dtype).",
        ),
        click.option(
            "--fail-on",
            metavar="LIST",
            default=default_fail_on,
            show_default=True,
            help=f"Which findings fail a gated method ({', '.join(FAIL_ON_CHOICES)}; 'none').",
        ),
        exit_zero_option(),
    )


def parse_gate(value: str, run: Sequence[str] | None = None) -> tuple[str, ...]:
    """``--gate``: ``none`` gates nothing; ``all`` every method in ``run`` when given (else
    every core method, as :func:`parse_methods`); else the methods named.

    >>> parse_gate("none"), parse_gate("all", ("fused", "log1p")), parse_gate("fused")
    ((), ('fused', 'log1p'), ('fused',))
    """
    word = value.strip().lower()
    if word == "none":
        return ()
    if word == "all" and run is not None:
        return tuple(run)
    return parse_methods(value, "--gate")


def wants_color(choice: str, stream: Any = None, output: str | None = None) -> bool:
    """Resolve ``--color`` for ``stream`` (default stdout) with :func:`use_color`; a report
    going to an ``--output`` file is not a terminal (only ``always``/FORCE_COLOR colour it)."""
    if output is not None and output != "-":
        return use_color(choice, False, os.environ)
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return use_color(choice, bool(isatty and isatty()), os.environ)


def all_inputs(*paths: str | None, baseline: bool = True) -> list[str]:
    """``paths`` plus every other file this run reads: the config file and (unless not
    ``baseline``) ``--baseline``.

    An output must never land on any of them; they are taken from the click context, so a
    command names only its data files.
    """
    out = [p for p in paths if p]
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        settings = (ctx.find_root().obj or {}).get("settings")
        if settings is not None and settings.path is not None:
            out.append(os.fspath(settings.path))
        given = ctx.params.get("baseline")
        if baseline and isinstance(given, str) and given:
            out.append(given)
    return list(dict.fromkeys(out))


def check_output(output: str | None, inputs: Iterable[str | None] = ()) -> None:
    """Refuse an ``--output`` that is one of the inputs before any work is done (exit 2)."""
    if output is None or output == "-":
        return
    from ..output import check_not_input

    check_not_input(output, all_inputs(*inputs))


def _to_stdout(text: str) -> None:
    """The report on stdout; a closed or full stdout is an error, never a silent exit 0."""
    stream = sys.stdout
    if stream is None or getattr(
        stream, "smcheck_closed", False
    ):  # started with stdout closed: click.echo would drop the report quietly
        raise UsageError("cannot write the report: standard output is closed")
    try:
        # color=True: never strip ANSI codes; the renderer already applied the --color decision
        click.echo(text, nl=not text.endswith("\n"), color=True, file=stream)
        stream.flush()
    except (OSError, ValueError) as exc:  # ENOSPC (>/dev/full), EPIPE, a closed file
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is closed"
        with contextlib.suppress(OSError, ValueError):  # no second error at interpreter exit
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, stream.fileno())
            os.close(fd)
        raise UsageError(
            f"{why[:1].lower()}{why[1:]} writing the report to standard output"
        ) from None


def emit(text: str, output: str | None, inputs: Iterable[str | None] = ()) -> None:
    """Write the report: to stdout, or to ``output`` through :func:`smcheck.output.open_output`
    (atomically for a file, directly for a device or FIFO; refused if it is an input)."""
    if output is None or output == "-":
        _to_stdout(text)
        return
    from ..output import write_atomic

    write_atomic(output, text, inputs=all_inputs(*inputs))


def exit_code(ok: bool, exit_zero: bool) -> int:
    """0 when every gated check passed (or ``--exit-zero``), else 1 (findings)."""
    return 0 if ok or exit_zero else 1


@contextlib.contextmanager
def progress_reporter(
    stream: Any = None, label: str = "rows"
) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a rich bar on ``stream`` (default stderr),
    or None when ``stream`` is not a terminal (no bar in logs, pipes or CI)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.speed
            return Text("" if speed is None else f"{speed:,.0f} {label}/s")

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=Console(file=stream), transient=True)
    task: list[Any] = []

    def update(done: int, total: int) -> None:
        if not task:
            # started at the first report, not before: its refresh thread must not exist yet
            # when the engine forks its workers (executor.can_fork)
            bar.start()
            task.append(bar.add_task(label, total=total))
        bar.update(task[0], completed=done)

    try:
        yield update
    finally:
        if task:
            bar.stop()


def load_logits(
    logits: str,
    labels: str | None,
    dtype: str | None,
    *,
    logits_key: str | None,
    labels_key: str | None,
    label_column: str | None,
    ignore_index: int,
    max_bytes: int | None = None,
) -> tuple[LoadedInput, str | None]:
    """Load a command's LOGITS/--labels and pick its working dtype.

    ``--label-column`` is a column index when it is an integer (negative from the end), else a
    header name. The dtype is the one given, else the file's float dtype (``None``: the caller
    keeps it), else float32 for text and integer files.
    """
    column: str | int | None = label_column
    if label_column is not None and label_column.lstrip("-").isdigit():
        column = int(label_column)
    extra = {} if max_bytes is None else {"max_bytes": max_bytes}
    loaded = load_input(
        logits,
        labels,
        logits_key=logits_key,
        labels_key=labels_key,
        label_column=column,
        ignore_index=ignore_index,
        raw_as=dtype,  # a raw 2-byte .npy is bfloat16 only when --dtype bfloat16 says so
        **extra,  # type: ignore[arg-type]
    )
    dtype, _ = file_dtype(loaded.file_dtype, dtype)  # float32 for text and integer files
    return loaded, dtype
