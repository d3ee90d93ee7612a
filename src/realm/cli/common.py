"""The ``realm`` command line's shared parts: the app and its sub-apps, consoles, the one-line error
wrapper, progress bars and the options every training command shares. Each area's commands live in
their own module of :mod:`realm.cli` and import from here; nothing here imports an area.

Bad input ends with one line, ``error: <file>: <problem>``, and exit code 2.
"""

from __future__ import annotations

import functools
import logging
import os

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time

app = typer.Typer(
    help="Reactive listener motion: data, features, models, evaluation, rendering, robots.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: synthesise the benchmark, inspect any supported layout.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train a model on a dataset directory.", no_args_is_help=True)
app.add_typer(train_app, name="train")

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def friendly(fn):
    """Turn expected failures into one clear line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from realm.errors import RealmInputError

        try:
            return fn(*args, **kwargs)
        except (RealmInputError, FileExistsError, KeyError, ValueError, ImportError) as e:  # ImportError: an optional package
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            console.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Fully unpickle peer dataset files no safe reader can read (a pickle can run any code: only for files you trust)."),
):
    from rich.logging import RichHandler

    import realm.data.peer

    realm.data.peer.TRUST_PICKLE = trust_pickle

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )  # fmt: skip


# Options every training command shares (Lightning runtime, seed, resume).
SEED = typer.Option(23456, help="Random seed.")
ACCELERATOR = typer.Option("auto", help="Lightning accelerator: auto | cpu | gpu ...")
DEVICES = typer.Option("auto", help="Lightning devices: auto, a count, or a list like 0,1.")
STRATEGY = typer.Option("auto", help="Lightning strategy: auto | ddp | ddp_spawn | fsdp ...")
NUM_NODES = typer.Option(1, "--num-nodes", help="Machines (Lightning num_nodes).")
PRECISION = typer.Option("32-true", help="Lightning precision, e.g. bf16-mixed on GPUs.")
NUM_WORKERS = typer.Option(0, "--num-workers", help="DataLoader worker processes.")
RESUME = typer.Option(False, "--resume", help="Continue a run from its last checkpoint(s).")


def parse_sets(items: list[str], option: str = "--set", form: str = "FIELD=VALUE") -> dict:
    """``["hidden=128", "vel_weights={\\"expression\\": 0.01}"]`` -> model config overrides (values as JSON)."""
    import json

    out_cfg = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected {form}")
        try:
            out_cfg[key.strip()] = json.loads(value)
        except ValueError:
            out_cfg[key.strip()] = value
    return out_cfg


def quiet_lightning() -> None:
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
