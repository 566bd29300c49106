"""The edge client: one party of a server job on a GGUF model through llama.cpp, with no torch.

It needs numpy, cma, httpx, llama-cpp-python and gguf (``pip install 'fedbpt[edge]'``) and runs the same
party loop as the full client (``clients.party``). Memory is kept small by default: the projection is
generated on the device one prompt token at a time and not kept (``fedbpt.projection``; ``--projection-cache-mb``
trades memory for speed), and llama.cpp's key/value cache holds 512 tokens (``--context``).

    python -m clients.edge --server https://host:8000 --token TOKEN --quant q4_0
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import typer

# cma imports matplotlib.pyplot whenever it is installed (about 45 MB resident); an edge client never plots,
# so it runs as on the slim ``edge`` install, where matplotlib is absent.
sys.modules.setdefault("matplotlib", None)
warnings.filterwarnings("ignore", message="Could not import matplotlib.pyplot")

from clients.options import CA_BUNDLE, DATA_DIR, ENROLL, EVAL_EXAMPLES, RETRY_FOR, SERVER_HELP, SHARD, TOKEN  # noqa: E402
from clients.party import DataChoice, ending, join_and_run, log  # noqa: E402
from fedbpt.cli import Command  # noqa: E402
from fedbpt.errors import UserError  # noqa: E402
from fedbpt.models import QUANTS, load_llama_backend, prepare  # noqa: E402
from fedbpt.spec import JobSpec  # noqa: E402

app = typer.Typer(add_completion=False)


def edge_backend(spec: JobSpec, model: str | None, quant: str | None, threads: int, context: int):
    """The llama.cpp backend for the job: the named model (default: the job's), re-quantized if asked."""
    name = model or spec.model.name
    if quant:
        base = name.partition(":")[0]
        log(f"using {base} re-quantized to {quant} (prepared once, then cached)")
        prepare(base, quant)
        name = f"{base}:{quant}"
    return load_llama_backend(name, threads=threads or None, n_ctx=context)


@app.command(cls=Command)
def edge(
    server: str = typer.Option(None, envvar="FEDBPT_SERVER", help=SERVER_HELP),  # checked below: one line
    token: str = TOKEN,
    enroll: str = ENROLL,
    model: str = typer.Option(
        None, help="model to load: a packaged name, name:quant or a .gguf file (default: the job's model)"
    ),
    quant: str = typer.Option(None, help=f"re-quantize the packaged model once and use that copy: {', '.join(QUANTS)}"),
    shard: int = SHARD,
    eval_examples: int = EVAL_EXAMPLES,
    data_dir: Path = DATA_DIR,
    threads: int = typer.Option(0, help="llama.cpp threads (0 = the CPUs this process may use)"),
    context: int = typer.Option(512, help="llama.cpp key/value cache in tokens (SmolLM2: 23 KB each)"),
    projection_cache_mb: int = typer.Option(
        0, help="keep the projection in memory if it fits (SmolLM2's: 58 MB), instead of regenerating it each step"
    ),
    ca_bundle: str = CA_BUNDLE,
    retry_for: float = RETRY_FOR,
):
    """Join a server job as one party on a GGUF model through llama.cpp (no torch), until the job ends."""
    if not server:  # not a required option: click would answer with a usage box, not one line
        raise UserError("pass --server (or set FEDBPT_SERVER)")
    if quant is not None and quant not in QUANTS:
        raise UserError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    try:
        job, info = join_and_run(
            server,
            token,
            enroll,
            ca_bundle,
            lambda spec: edge_backend(spec, model, quant, threads, context),
            DataChoice(shard, eval_examples, data_dir),
            projection_cache_mb * 2**20,
            retry_for,
        )
    except KeyboardInterrupt:  # here: click would turn it into "Aborted!"
        typer.echo("error: interrupted; rerun the same command to rejoin", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"job {job} {ending(info)}")


def main() -> None:
    """The ``fedbpt-edge`` console script and ``python -m clients.edge``."""
    app(prog_name="fedbpt-edge")


if __name__ == "__main__":
    main()
