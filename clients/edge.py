"""The edge client: one party of a server job on a GGUF model through llama.cpp, with no torch.

It needs numpy, cma, httpx, llama-cpp-python and gguf (``pip install 'fedbpt[edge]'``) and runs the same
party loop as the full client (``clients.party``). The projection is generated on the device one prompt
token at a time (``fedbpt.projection``), and llama.cpp's context is sized for a small memory budget.

    python -m clients.edge --server https://host:8000 --token TOKEN --quant q4_0
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clients.party import PARTY_ERRORS, DataChoice, join_and_run, log
from fedbpt.backends.llama import LlamaError
from fedbpt.models import QUANTS, load_llama_backend, prepare


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedbpt-edge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("FEDBPT_SERVER"), help="server URL (or FEDBPT_SERVER)")
    parser.add_argument("--token", default=os.environ.get("FEDBPT_TOKEN"), help="this party's token (or FEDBPT_TOKEN)")
    parser.add_argument("--enroll", help="a one-time enrollment secret to redeem instead of a token")
    parser.add_argument("--model", help="packaged name, name:quant or .gguf file (default: the job's model)")
    parser.add_argument("--quant", choices=QUANTS, help="re-quantize the packaged model once and use that copy")
    parser.add_argument("--shard", type=int, default=0, help="this party's shard of a benchmark task's split")
    parser.add_argument("--shards", type=int, default=0, help="number of shards (0 = the task's whole train file)")
    parser.add_argument("--examples-per-party", type=int, default=16, help="training examples per shard")
    parser.add_argument("--partition", default="dirichlet", help="iid or dirichlet (for shards)")
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration (for shards)")
    parser.add_argument("--eval-examples", type=int, default=200, help="held-out rows scored each round")
    parser.add_argument("--data-dir", type=Path, default=Path("."), help="folder of a task file's data files")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0 = the CPUs this process may use)")
    parser.add_argument("--ca-bundle", help="CA certificate bundle (PEM) to verify the server's TLS certificate")
    args = parser.parse_args(argv)
    if not args.server:
        parser.error("pass --server (or set FEDBPT_SERVER)")
    return args


def edge_backend(spec: dict, model: str | None, quant: str | None, threads: int):
    """The llama.cpp backend for the job: the named model (default: the job's), re-quantized if asked."""
    name = model or spec["model"]["name"]
    if quant:
        base = name.partition(":")[0]
        log(f"using {base} re-quantized to {quant} (prepared once, then cached)")
        prepare(base, quant)
        name = f"{base}:{quant}"
    return load_llama_backend(name, threads=threads or None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    choice = DataChoice(
        args.shard, args.shards, args.examples_per_party, args.partition, args.alpha, args.eval_examples, args.data_dir
    )
    try:
        job, info = join_and_run(
            args.server,
            args.token,
            args.enroll,
            args.ca_bundle,
            lambda spec: edge_backend(spec, args.model, args.quant, args.threads),
            choice,
        )
    except (*PARTY_ERRORS, LlamaError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to rejoin", file=sys.stderr)
        return 130
    print(f"job {job} {info['status']} after round {info['round']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
