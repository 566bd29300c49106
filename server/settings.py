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
    body_timeout_s: float = 10.0  # the longest a request's body may take to arrive (then 408)
    auth_failures: int = 20  # failed authentications from one address within auth_window_s before it gets 429
    auth_window_s: float = 60.0
    enrollment_ttl_s: float = 86_400.0  # an enrollment secret works for this long after it is issued

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
        settings = cls(
            admin_token=token,
            database=os.environ.get("FEDBPT_DB", cls.database),
            max_body_bytes=int(os.environ.get("FEDBPT_MAX_BODY_BYTES", cls.max_body_bytes)),
            max_wait_s=float(os.environ.get("FEDBPT_MAX_WAIT_S", cls.max_wait_s)),
            events_dir=os.environ.get("FEDBPT_EVENTS_DIR", cls.events_dir),
            body_timeout_s=float(os.environ.get("FEDBPT_BODY_TIMEOUT_S", cls.body_timeout_s)),
            auth_failures=int(os.environ.get("FEDBPT_AUTH_FAILURES", cls.auth_failures)),
            auth_window_s=float(os.environ.get("FEDBPT_AUTH_WINDOW_S", cls.auth_window_s)),
            enrollment_ttl_s=float(os.environ.get("FEDBPT_ENROLLMENT_TTL_S", cls.enrollment_ttl_s)),
        )
        if settings.auth_failures < 1:
            raise UserError("FEDBPT_AUTH_FAILURES must be at least 1: the failed authentications before a 429")
        return settings
