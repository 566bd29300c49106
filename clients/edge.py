"""The edge client: one party of a server job on a GGUF model through llama.cpp, with no torch.

It needs numpy, cma, httpx, llama-cpp-python and gguf (``pip install 'fedbpt[edge]'``) and runs the same
party loop as the full client (``clients.party``). Memory is kept small by default: the projection is
generated on the device one prompt token at a time and not kept (``fedbpt.projection``; ``--projection-cache-mb``
trades memory for speed), and llama.cpp's key/value cache holds 512 tokens (``--context``).

    python -m clients.edge --server https://host:8000 --token TOKEN --quant q4_0
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

# cma imports matplotlib.pyplot whenever it is installed (about 45 MB resident); an edge client never plots,
# so it runs as on the slim ``edge`` install, where matplotlib is absent.
sys.modules.setdefault("matplotlib", None)
warnings.filterwarnings("ignore", message="Could not import matplotlib.pyplot")

from clients.party import PARTY_ERRORS, DataChoice, ending, join_and_run, log  # noqa: E402
from fedbpt.backends.llama import LlamaError  # noqa: E402
from fedbpt.models import QUANTS, load_llama_backend, prepare  # noqa: E402
from fedbpt.spec import JobSpec  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedbpt-edge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("FEDBPT_SERVER"), help="server URL (or FEDBPT_SERVER)")
    parser.add_argument("--token", default=os.environ.get("FEDBPT_TOKEN"), help="this party's token (or FEDBPT_TOKEN)")
    parser.add_argument("--enroll", help="a one-time enrollment secret to redeem instead of a token")
    parser.add_argument("--model", help="packaged name, name:quant or .gguf file (default: the job's model)")
    parser.add_argument("--quant", choices=QUANTS, help="re-quantize the packaged model once and use that copy")
    parser.add_argument(
        "--shard",
        type=int,
        help="be party i of the job's seeded split of its task, as in fedbpt simulate (default: the whole train file)",
    )
    parser.add_argument(
        "--eval-examples",
        type=int,
        help="held-out rows this party scores its share of (default: the job's data.eval_examples; 0 = all)",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("."), help="folder of a task file's data files")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0 = the CPUs this process may use)")
    parser.add_argument(
        "--context", type=int, default=512, help="llama.cpp key/value cache in tokens (SmolLM2: 23 KB each)"
    )
    parser.add_argument(
        "--projection-cache-mb",
        type=int,
        default=0,
        help="keep the projection in memory if it fits (SmolLM2's: 58 MB), instead of regenerating it each step",
    )
    parser.add_argument("--ca-bundle", help="CA certificate bundle (PEM) to verify the server's TLS certificate")
    args = parser.parse_args(argv)
    if not args.server:
        parser.error("pass --server (or set FEDBPT_SERVER)")
    return args


def edge_backend(spec: JobSpec, model: str | None, quant: str | None, threads: int, context: int):
    """The llama.cpp backend for the job: the named model (default: the job's), re-quantized if asked."""
    name = model or spec.model.name
    if quant:
        base = name.partition(":")[0]
        log(f"using {base} re-quantized to {quant} (prepared once, then cached)")
        prepare(base, quant)
        name = f"{base}:{quant}"
    return load_llama_backend(name, threads=threads or None, n_ctx=context)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    choice = DataChoice(args.shard, args.eval_examples, args.data_dir)
    try:
        job, info = join_and_run(
            args.server,
            args.token,
            args.enroll,
            args.ca_bundle,
            lambda spec: edge_backend(spec, args.model, args.quant, args.threads, args.context),
            choice,
            args.projection_cache_mb * 2**20,
        )
    except (*PARTY_ERRORS, LlamaError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to rejoin", file=sys.stderr)
        return 130
    print(f"job {job} {ending(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
