"""The server's HTTP API as Python calls, with retries: used by the clients and the admin commands.

Connection errors, 5xx answers, 408 (a body too slow to arrive) and 429 (an address refused for a while after
failed authentications, which a neighbour behind the same address may cause) are retried with exponential
backoff, for at least the ``Retry-After`` a 429 gives (a restarting server is ridden out); other 4xx answers raise
``ServerRefused`` with the server's message. Every write is idempotent on the server (an identical resend is
accepted as a duplicate), so retrying a POST whose answer was lost is safe.
"""

from __future__ import annotations

import ssl
import sys
import time

import httpx

from fedbpt.errors import UserError

RETRY_FOR_S = 600.0
RETRIED = (408, 429)  # the 4xx answers that a later try may not get


class ServerRefused(UserError, RuntimeError):
    """The server refused a request (4xx); ``code`` is its machine-readable reason."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status, self.code = status, code


class ServerUnavailable(UserError, RuntimeError):
    """The server could not be reached (or kept failing) for longer than the retry window."""


class Api:
    def __init__(self, url: str, token: str, ca_bundle: str | None = None, retry_for_s: float = RETRY_FOR_S):
        self.retry_for_s = retry_for_s
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True,
            timeout=httpx.Timeout(90.0, connect=10.0),
        )

    def identify(self, client: str) -> None:
        """Name this party's program, engine and precision to the server (its dashboard shows them)."""
        self.http.headers["User-Agent"] = client

    def request(self, method: str, path: str, **options) -> dict | list:
        give_up = time.monotonic() + self.retry_for_s
        delay = 0.5
        while True:
            try:
                response = self.http.request(method, path, **options)
            except httpx.TransportError as error:
                if isinstance(error, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(error):
                    raise ServerUnavailable(
                        f"cannot verify the server's TLS certificate ({error}); pass its CA with --ca-bundle"
                    ) from None
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 500 and response.status_code not in RETRIED:
                    return self._parsed(response)
                problem = f"HTTP {response.status_code}"
                if response.headers.get("Retry-After", "").isdigit():
                    delay = max(delay, float(response.headers["Retry-After"]))
            if time.monotonic() + delay > give_up:
                raise ServerUnavailable(
                    f"server at {self.http.base_url} unavailable for {self.retry_for_s:.0f} s: check the URL and that "
                    "the server runs (--retry-for waits longer)"
                )
            print(f"server unavailable ({problem}); retrying in {delay:.1f} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    @staticmethod
    def _parsed(response: httpx.Response) -> dict | list:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.is_success:
            return body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise ServerRefused(response.status_code, error.get("code", "error"), error.get("message", response.text))

    # party routes
    def me(self) -> dict:
        return self.request("GET", "/v1/me")

    def spec(self, job: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job}/spec")

    def round(self, job: str, after: int = -1, wait: float = 0.0) -> dict:
        return self.request("GET", f"/v1/jobs/{job}/round", params={"after": after, "wait": wait})

    def submit(self, job: str, round_number: int, report: dict) -> dict:
        """Send a report (``fedbpt.rounds.report_body``) for the open round."""
        return self.request("POST", f"/v1/jobs/{job}/rounds/{round_number}/reports", json=report)

    def evaluate(self, job: str, prompt_round: int, accuracy: float, n_examples: int, **accuracies: float) -> dict:
        """Report this party's held-out accuracy of the prompt after round ``prompt_round`` (``accuracies``: raw,
        calibrated, zero_shot_raw, zero_shot_calibrated)."""
        body = {"accuracy": accuracy, "n_examples": n_examples, **accuracies}
        return self.request("POST", f"/v1/jobs/{job}/rounds/{prompt_round}/evaluations", json=body)

    # administrator routes
    def create_job(self, spec: dict) -> dict:
        return self.request("POST", "/v1/jobs", json=spec)

    def add_party(self, job: str, name: str) -> dict:
        return self.request("POST", f"/v1/jobs/{job}/parties", json={"name": name})

    def job(self, job: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job}")

    def jobs(self) -> list[dict]:
        return self.request("GET", "/v1/jobs")

    def cancel(self, job: str) -> dict:
        return self.request("POST", f"/v1/jobs/{job}/cancel")

    def revoke(self, job: str, party: str) -> dict:
        """Revoke the party's token (and its unredeemed enrollment secrets)."""
        return self.request("DELETE", f"/v1/jobs/{job}/parties/{party}/token")

    # results (administrator or the job's parties)
    def history(self, job: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job}/history")

    def prompt(self, job: str, which: str = "best") -> dict:
        return self.request("GET", f"/v1/jobs/{job}/prompt", params={"which": which})


def enroll(url: str, secret: str, ca_bundle: str | None = None, retry_for_s: float = RETRY_FOR_S) -> dict:
    """Redeem a one-time enrollment secret for a party token."""
    return Api(url, "", ca_bundle, retry_for_s).request("POST", "/v1/enroll", json={"secret": secret})
