"""The options every server-facing command shares, defined once: ``fedbpt client`` and ``fedbpt-edge`` join a job
with the same flags, and the ``fedbpt job`` commands reach the server with the same ones."""

from __future__ import annotations

from pathlib import Path

import typer

SERVER_HELP = "server URL, e.g. https://host:8000"
SERVER = typer.Option(..., envvar="FEDBPT_SERVER", help=SERVER_HELP)
CA_BUNDLE = typer.Option(None, help="CA certificate bundle (PEM) to verify the server's TLS certificate")
RETRY_FOR = typer.Option(600.0, min=0, help="seconds to keep retrying an unreachable server before giving up")

# A party's: its credentials and which of the job's data it holds.
TOKEN = typer.Option(None, envvar="FEDBPT_TOKEN", help="this party's token")
ENROLL = typer.Option(None, help="a one-time enrollment secret to redeem instead of a token")
SHARD = typer.Option(
    None,
    help="be party i of the job's seeded split of its task, as in fedbpt simulate (default: the whole training file)",
)
EVAL_EXAMPLES = typer.Option(
    None, help="held-out rows this party scores its share of (default: the job's data.eval_examples; 0 = all)"
)
DATA_DIR = typer.Option(Path("."), help="folder holding the data files a task file names")
