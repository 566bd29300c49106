"""The dashboard in a real browser (Debian's chromium driven by Playwright) following a real tiny-model job run
by client processes; its page and /docs load nothing from outside the server; viewer tokens see the dashboard
only, until revoked, and party tokens do not see it."""

from __future__ import annotations

import os
import re
import shutil

import httpx
import pytest
from serving import ADMIN_TOKEN, ServerProcess, admin_headers
from test_party import job_spec, start_client

from clients.api import Api
from fedbpt.spec import to_dict

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def server(tmp_path):
    server = ServerProcess(tmp_path / "server.db").start()
    yield server
    server.stop()


def add_viewer(server: ServerProcess, name: str = "ops") -> str:
    response = httpx.post(f"{server.url}/v1/viewers", json={"name": name}, headers=admin_headers())
    assert response.status_code == 201, response.text
    return response.json()["token"]


def test_the_page_and_the_api_docs_load_only_the_servers_own_assets(server):
    for path in ("/dashboard", "/docs"):
        page = httpx.get(server.url + path)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets and not re.search(r"https?://", page.text)
        for asset in assets:
            assert httpx.get(server.url + asset).status_code == 200, asset


def test_a_viewer_sees_the_dashboard_only_until_it_is_removed_and_a_party_never(server, tiny_model_dir):
    admin = Api(server.url, ADMIN_TOKEN)
    job = admin.create_job(to_dict(job_spec(tiny_model_dir)))["id"]
    party_token = admin.add_party(job, "party-0")["token"]
    token = add_viewer(server)
    viewer = {"Authorization": f"Bearer {token}"}
    data = httpx.get(f"{server.url}/v1/dashboard/jobs/{job}", headers=viewer).json()
    assert data["id"] == job and [party["name"] for party in data["parties"]] == ["party-0"]
    assert httpx.get(f"{server.url}/v1/jobs", headers=viewer).status_code == 401  # not an administrator
    assert httpx.post(f"{server.url}/v1/viewers", json={"name": "x"}, headers=viewer).status_code == 401
    party = httpx.get(f"{server.url}/v1/dashboard/jobs/{job}", headers={"Authorization": f"Bearer {party_token}"})
    assert party.status_code == 403 and party.json()["error"]["code"] == "viewer_only"
    assert httpx.post(f"{server.url}/v1/viewers", json={"name": "ops"}, headers=admin_headers()).status_code == 409
    assert httpx.delete(f"{server.url}/v1/viewers/ops", headers=admin_headers()).status_code == 200
    assert httpx.get(f"{server.url}/v1/dashboard/jobs", headers=viewer).status_code == 401


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is installed by scripts/setup.sh"
)
def test_the_dashboard_follows_a_job_live_in_a_browser(server, tiny_model_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    admin = Api(server.url, ADMIN_TOKEN)
    job = admin.create_job(to_dict(job_spec(tiny_model_dir)))["id"]
    tokens = [admin.add_party(job, f"party-{i}")["token"] for i in range(3)]
    clients = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/dashboard")
            page.fill("#token", add_viewer(server))
            page.click("#login button")
            page.wait_for_selector(f"#job-rows tr[data-job='{job}']")
            page.wait_for_function("document.querySelectorAll('#party-rows tr').length === 3")
            assert "0 of 3 reports in" in page.inner_text("#round-text")

            clients = [start_client(server, token, shard) for shard, token in enumerate(tokens[:2])]
            page.wait_for_function("document.getElementById('round-text').textContent.includes('2 of 3 reports')")
            assert page.inner_text("#party-rows tr[data-party='party-0'] td.reports") == "1"
            assert "transformers float32" in page.inner_text("#party-rows tr[data-party='party-0']")
            assert page.locator("#curve path.series").count() == 0  # no prompt scored yet

            clients.append(start_client(server, tokens[2], 2))
            page.wait_for_function(
                "document.getElementById('round-text').textContent.startsWith('finished')", timeout=120_000
            )
            for curve in ("calibrated", "raw"):  # the chosen start and the search rounds' prompts, as rounds closed
                assert int(page.get_attribute(f"#curve path.{curve}", "data-points")) >= 2
            labels = page.text_content("#curve")
            assert "zero-shot, calibrated" in labels and "zero-shot, raw" in labels
            assert int(page.get_attribute("#curve path.loss", "data-points")) >= 2
            assert page.locator("#curve circle.best").count() == 1
            reports = page.inner_text("#party-rows tr[data-party='party-2'] td.reports")
            assert int(reports) == len(admin.history(job)["rounds"])
            page.screenshot(path=str(tmp_path / "dashboard.png"))
        finally:
            browser.close()
            for client in clients:
                client.kill()
