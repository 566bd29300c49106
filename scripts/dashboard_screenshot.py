"""A screenshot of the live dashboard following a real job: `fedbpt local` (SmolLM2-135M on SST-2 by default) with
the page open in Debian's chromium (Playwright), taken when the job has finished.

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png] [-- fedbpt local options]

Options after ``--`` go to `fedbpt local` (default: --config docs/run.toml --rounds 6).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = re.compile(r"^dashboard: (?P<url>\S+) \(viewer token: (?P<token>\S+)\)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("local", nargs="*", default=["--config", "docs/run.toml", "--rounds", "6"])
    args = parser.parse_args()
    fedbpt = str(ROOT / ".venv" / "bin" / "fedbpt")
    command = [fedbpt, "local", *args.local, "--out", "runs/dashboard", "--linger", "60"]
    local = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        for line in local.stdout:
            print(line, end="")
            found = DASHBOARD.match(line)
            if found:
                break
        else:
            sys.exit("error: fedbpt local ended before printing the dashboard's address")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(found["url"])
            page.fill("#token", found["token"])
            page.click("#login button")
            for line in local.stdout:
                print(line, end="")
                if line.startswith("returned prompt written"):
                    break
            page.wait_for_function("document.getElementById('round-text').textContent.startsWith('finished')")
            page.wait_for_timeout(2500)  # one more poll: every party's last report is in the table
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"screenshot written to {args.out}")
    finally:
        local.terminate()
        local.wait(30)


if __name__ == "__main__":
    main()
