"""Server settings, read from the environment when the app starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedbpt.errors import UserError


@dataclass(frozen=True)
class Settings:
    admin_token: str
    database: str = "fedbpt-server.db"
    max_body_bytes: int = 1 << 20
    max_wait_s: float = 30.0  # the longest a long-poll for the next round is held
    deadline_check_s: float = 0.5  # how often overdue rounds are looked for
    events_dir: str = ""  # each job's event log (JSON lines) goes here; "" = beside the database

    @property
    def events_folder(self) -> Path:
        database = Path(self.database)
        return Path(self.events_dir) if self.events_dir else database.parent / f"{database.stem}-events"

    @classmethod
    def from_env(cls) -> Settings:
        token = os.environ.get("FEDBPT_ADMIN_TOKEN", "")
        if len(token) < 16:
            raise UserError(
                "FEDBPT_ADMIN_TOKEN must be set to a secret of at least 16 characters, for example: "
                'export FEDBPT_ADMIN_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(32))")'
            )
        return cls(
            admin_token=token,
            database=os.environ.get("FEDBPT_DB", cls.database),
            max_body_bytes=int(os.environ.get("FEDBPT_MAX_BODY_BYTES", cls.max_body_bytes)),
            max_wait_s=float(os.environ.get("FEDBPT_MAX_WAIT_S", cls.max_wait_s)),
            events_dir=os.environ.get("FEDBPT_EVENTS_DIR", cls.events_dir),
        )
