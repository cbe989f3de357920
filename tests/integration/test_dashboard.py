"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) over a real federation
with TLS and tokens: the pages load cleanly, a running session's curve gains a point per round, a viewer
sees no stop button, and the stop button calls the stop route. Screenshots go to the test's tmp path."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedn.auth.tokens import Role
from fedn.codec import encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import SessionStatus
from tests.federations import serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"


def _ensure_chromium() -> None:
    """Install Debian's chromium as `make install` does; skip only if it is missing and cannot be."""
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and cannot be (needs root and apt-get): run `make install`")
    result = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, timeout=900, check=False)
    if result.returncode or not CHROMIUM.exists():
        pytest.skip(f"chromium could not be installed: {result.stderr.decode(errors='replace')[-300:]}")


@pytest.fixture
def browser() -> Iterator[object]:
    _ensure_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    spec = FederationSpec(
        client="examples.digits:DigitsClient", num_combiners=1, num_clients=2, workdir=tmp_path / "fed"
    )
    with serving(spec) as fed:
        yield fed


class _Page:
    """A page with its console errors collected (the test asserts there are none)."""

    def __init__(self, browser, url: str) -> None:
        self.context = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.page.wait_for_selector("#live.on", timeout=30_000)

    def open_session(self, session_id: str) -> None:
        self.page.click("button.tab[data-view=sessions]")
        self.page.wait_for_selector(f"tr[data-session='{session_id}']", timeout=30_000)
        self.page.click(f"tr[data-session='{session_id}']")
        self.page.wait_for_selector("#session-detail:not([hidden])")

    def points(self) -> int:
        return int(self.page.get_attribute("#chart-loss", "data-points") or 0)


def _wait(predicate, what: str, timeout_s: float = 240.0, step_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step_s)
    raise AssertionError(f"timed out waiting for {what}")


def test_dashboard_follows_a_session_and_stops_one(federation: LocalFederation, browser, tmp_path: Path):
    from examples.digits import DigitsClient

    api = federation.api()
    seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
    admin = federation.secrets.token(Role.ADMIN, "admin")
    viewer = federation.secrets.token(Role.VIEWER, "dash-viewer")
    base = federation.reducer_url

    # The page and its assets are open; the data is not: without a token the page asks for one.
    anonymous = browser.new_context(ignore_https_errors=True).new_page()
    anonymous.goto(f"{base}/")
    anonymous.wait_for_selector("#token-panel:not([hidden])", timeout=30_000)
    assert "refused the token" in anonymous.text_content("#token-message")
    anonymous.fill("#token-input", "not-a-token")
    anonymous.click("#token-form button[type=submit]")
    anonymous.wait_for_selector("#token-panel:not([hidden]) #token-message:not([hidden])", timeout=30_000)
    assert anonymous.get_attribute("#live", "class") != "live on"

    page = _Page(browser, f"{base}/#token={admin}")
    assert "token=" not in page.page.url  # moved to sessionStorage, out of the address bar
    _wait(lambda: page.page.text_content("#stat-combiners").startswith("1 /"), "the combiner on the page", 30)
    page.page.screenshot(path=str(tmp_path / "federation.png"), full_page=True)

    # A running session's loss curve gains a point per round, live (no reload).
    rounds = 4
    # rounds of about a second or more (100 epochs each): the store watcher reads once a second, so
    # faster rounds could all end between two of its reads and the curve would jump from 0 to 4
    session = api.start_session(
        rounds=rounds, min_clients=2, round_timeout_s=120.0, model_id=seed.id, config={"epochs": 100}
    )
    page.open_session(session.id)
    seen: list[int] = []

    def finished() -> bool:
        points = page.points()
        if not seen or seen[-1] != points:
            seen.append(points)
        return api.get_session(session.id).status == SessionStatus.DONE and points == rounds

    _wait(finished, "the session to finish with a point per round on the page")
    assert seen == sorted(seen) and seen[-1] == rounds
    assert len(set(seen) - {0}) >= 2, f"the curve did not grow while the session ran: {seen}"
    chart = page.page.evaluate("() => window.fednDashboard.charts.loss")
    assert chart["x"] == list(range(1, rounds + 1))
    done = api.list_rounds(session.id)
    train_loss = [r.metrics["train_loss"].mean for r in done if "train_loss" in r.metrics]
    if train_loss:
        assert chart["series"]["train_loss"] == pytest.approx(train_loss)
    page.page.screenshot(path=str(tmp_path / "session.png"), full_page=True)
    if os.environ.get("FEDN_UPDATE_DOC_IMAGES") == "1":  # refresh docs/img/dashboard.png; tests leave the tree alone
        shutil.copyfile(tmp_path / "session.png", DOCS_SHOT)
    page.page.click("button.tab[data-view=models]")
    page.page.wait_for_selector(f"tr[data-model='{done[-1].model_out}']", timeout=30_000)
    page.page.screenshot(path=str(tmp_path / "models.png"), full_page=True)
    assert page.errors == []

    # A viewer sees the running session read-only.
    long = api.start_session(rounds=200, min_clients=2, round_timeout_s=120.0, model_id=seed.id)
    _wait(lambda: api.get_session(long.id).status == SessionStatus.RUNNING, "the long session to run")
    view = _Page(browser, f"{base}/#token={viewer}")
    view.open_session(long.id)
    view.page.wait_for_selector("#session-status.running", timeout=30_000)
    assert view.page.is_hidden("#stop-button")
    assert view.page.text_content("#role") == "role: viewer"
    assert view.errors == []

    # The admin's stop button calls the stop route; the session ends stopped (or the error is shown).
    page.page.click("button.tab[data-view=sessions]")
    page.open_session(long.id)
    page.page.wait_for_selector("#stop-button:not([hidden])", timeout=30_000)
    with page.page.expect_response(lambda r: r.url.endswith(f"/api/v1/sessions/{long.id}/stop")) as stop:
        page.page.click("#stop-button")
    assert stop.value.request.method == "POST"
    if stop.value.ok:
        page.page.wait_for_selector("#session-status.stopped", timeout=120_000)
        assert page.page.is_hidden("#stop-button")
        assert api.get_session(long.id).status == SessionStatus.STOPPED
    else:
        page.page.wait_for_selector("#stop-error:not([hidden])")
        assert str(stop.value.status) in page.page.text_content("#stop-error")
    page.page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)
    api.close()


def test_the_swagger_page_loads_offline_and_calls_the_api_with_the_token(
    federation: LocalFederation, browser, tmp_path: Path
):
    admin = federation.secrets.token(Role.ADMIN, "admin")
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(f"{federation.reducer_url}/api/v1/docs")
    # the document needs a token: the page asks for one before it loads anything
    page.wait_for_selector("#fedn-token-form:not([hidden])", timeout=30_000)
    page.fill("#fedn-token", admin)
    page.click("#fedn-token-form button[type=submit]")
    page.wait_for_selector(".opblock", timeout=30_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.getAttribute('data-path'))")
    assert "/api/v1/sessions/{session_id}/stop" in paths and "/api/v1/metrics" not in paths
    # "Try it out" on the session list sends the token it was given
    block = page.locator(".opblock-get:has(.opblock-summary-path[data-path='/api/v1/sessions'])").first
    block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    with page.expect_response(lambda r: "/api/v1/sessions?" in r.url or r.url.endswith("/api/v1/sessions")) as res:
        block.locator("button.execute").click()
    assert res.value.status == 200 and res.value.request.headers.get("authorization") == f"Bearer {admin}"
    page.screenshot(path=str(tmp_path / "swagger.png"), full_page=False)
    assert errors == [], failed
    origin = federation.reducer_url
    assert all(url.startswith(origin) or url.startswith("data:") for url in requests), "a request left the reducer"
    context.close()
