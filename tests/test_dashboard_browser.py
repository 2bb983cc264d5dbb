"""The dashboard in a real Chromium (the system's, driven by Playwright) against a real
``gatewayd run --whatsapp sim`` on a fresh database, used the way a person uses it.

Only the phone is simulated: the QR is read off the page's pixels and "scanned" through the
simulated network's ``/_sim`` control API. A failing test leaves a full-page screenshot in
``build/test-screenshots/``.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import PIL.Image
import pytest
import zxingcpp
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.browser import ROOT, SimDaemon, launch_chromium, write_sim_config

SCREENSHOTS = ROOT / "build" / "test-screenshots"
PHONE = "6281234567890"
CUSTOMER = "6281111111111"
GROUP = "120363025246125486"


@pytest.fixture
def daemon(pg_dsn: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SimDaemon]:
    extra = getattr(request, "param", "")
    with SimDaemon.running(write_sim_config(tmp_path, pg_dsn, extra)) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Browser]:
    # Name resolution is cut off: nothing but the daemon on 127.0.0.1 can be reached.
    with sync_playwright() as playwright:
        chromium = launch_chromium(
            playwright, "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
        )
        yield chromium
        chromium.close()


def open_page(browser: Browser, daemon: SimDaemon, **context: Any) -> Page:
    ctx = browser.new_context(
        base_url=daemon.base_url,
        locale="en-US",
        timezone_id="UTC",
        accept_downloads=True,
        **context,
    )
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    return page


@pytest.fixture
def page(browser: Browser, daemon: SimDaemon, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context's page; a test parametrized with ``width`` and ``height`` gets
    that viewport. On failure, a full-page screenshot."""
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    viewport = {"width": params.get("width", 1280), "height": params.get("height", 800)}
    page = open_page(browser, daemon, viewport=viewport)
    yield page
    report = getattr(request.node, "report_call", None)
    if report is None or report.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', request.node.name)}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the failure: {path}")
    page.context.close()


def decode_qr(png: bytes) -> list[str]:
    image = PIL.Image.open(io.BytesIO(png))
    return [barcode.text for barcode in zxingcpp.read_barcodes(image)]


def either(scope: Locator | Page, name: str) -> Locator:
    """A control the user knows by ``name``, be it a link or a button."""
    return scope.get_by_role("link", name=name, exact=True).or_(
        scope.get_by_role("button", name=name, exact=True)
    )


@contextmanager
def api_user(daemon: SimDaemon) -> Iterator[tuple[str, httpx.Client]]:
    """A new user through the API: its PIN and a client carrying its login token."""
    pin = daemon.sim.post("/api/v1/auth/generate-pin").json()["data"]["pin"]
    basic = base64.b64encode(f"{pin}:".encode()).decode()
    login = daemon.sim.post("/api/v1/auth/login", headers={"Authorization": f"Basic {basic}"})
    token = login.json()["data"]["token"]
    with httpx.Client(
        base_url=daemon.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield pin, client


def log_in(page: Page, pin: str) -> None:
    page.goto("/login")
    page.get_by_label("PIN").fill(pin)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/dashboard$"))
    expect(page.get_by_test_id("dashboard-ready")).to_be_attached()


# ------------------------------------------------------------------------ the whole walk


def test_generate_pin_link_a_phone_and_see_its_messages(page: Page, daemon: SimDaemon) -> None:
    """Generate a PIN → log in → create a session → Start → the QR on the page decodes to the
    simulated network's payload → scan it → Connected!, the modal closes → messages arrive →
    the dashboard, the session page and analytics show them; keys; log out."""
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.on("websocket", lambda ws: urls.append(ws.url))

    page.goto("/")
    page.get_by_role("button", name="Generate PIN").click()
    pin = page.get_by_test_id("pin").inner_text().strip()
    assert re.fullmatch(r"[A-Z0-9]{6}", pin), pin
    expect(page.get_by_text("Save this PIN! You'll need it to login.")).to_be_visible()
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    page.get_by_role("link", name="Go to login").click()
    expect(page).to_have_url(re.compile(r"/login$"))

    page.get_by_label("PIN").fill(pin.lower())  # typed in lower case: read as the PIN it spells
    with page.expect_response("**/api/v1/auth/login") as answer:
        page.get_by_role("button", name="Log in").click()
    token = answer.value.json()["data"]["token"]
    expect(page).to_have_url(re.compile(r"/dashboard$"))
    expect(page.get_by_test_id("dashboard-ready")).to_be_attached()
    expect(page.get_by_test_id("empty-state")).to_be_visible()

    # A session, started: the QR modal.
    page.get_by_role("button", name="New session").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Session name").fill("Sales desk")
    dialog.get_by_role("button", name="Create").click()
    row = page.get_by_test_id("session-row")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Sales desk")
    session_id = row.get_attribute("data-session-id")
    assert session_id and re.fullmatch(r"[0-9a-f-]{36}", session_id)
    expect(row).to_have_attribute("data-status", "disconnected")

    row.get_by_role("button", name="Start").click()
    modal = page.get_by_role("dialog", name="Scan QR code")
    qr = modal.get_by_test_id("qr-image")
    expect(qr).to_be_visible()
    expect(modal.get_by_test_id("qr-status")).to_have_text("Waiting for scan...")
    seconds = int(re.sub(r"\D", "", modal.get_by_test_id("qr-countdown").inner_text()))
    assert 0 < seconds <= 60

    # The QR as the page shows it, read off the screen; QRs rotate, so one retry.
    for _ in range(2):
        shown = decode_qr(qr.screenshot())
        expected = daemon.qr_payload(session_id)
        if shown == [expected]:
            break
    assert shown == [expected]
    assert expected and expected.startswith("https://wa.me/settings/linked_devices#")

    daemon.scan(session_id, PHONE)
    expect(modal.get_by_test_id("qr-status")).to_have_text("Connected!")
    expect(modal).to_be_hidden(timeout=10_000)  # closes by itself 2 s later
    expect(row).to_have_attribute("data-status", "connected")
    expect(row.get_by_test_id("phone")).to_contain_text(PHONE)

    # Inbound messages, live on the dashboard.
    texts = ["Halo, stok ada?", "Harga berapa?", "Terima kasih"]
    for text in texts:
        daemon.inject(session_id, **{"from": CUSTOMER, "text": text, "pushName": "Budi"})
    daemon.inject(
        session_id,
        **{"from": "6282222222222", "text": "@bot promo?", "group": GROUP, "mentions": [PHONE]},
    )
    recent = page.get_by_test_id("recent-messages")
    for text in texts:
        expect(recent).to_contain_text(text)
    expect(page.get_by_test_id("overview-today")).to_contain_text("4")

    # The session page: the message log.
    either(row, "Details").click()
    expect(page).to_have_url(re.compile(rf"/session/{session_id}$"))
    log = page.get_by_test_id("message-log")
    expect(log.get_by_test_id("message-row")).to_have_count(4)
    expect(log).to_contain_text("Halo, stok ada?")
    expect(page.get_by_test_id("deliveries")).to_be_visible()

    # Analytics.
    page.goto("/dashboard")
    either(page.get_by_test_id("session-row"), "Analytics").click()
    expect(page).to_have_url(re.compile(rf"/analytics/{session_id}$"))
    page.get_by_role("button", name="Today", exact=True).click()
    expect(page.get_by_test_id("stat-total")).to_contain_text("4")
    for chart in ("chart-messages", "chart-private-group", "chart-peak-hours", "chart-types"):
        expect(page.get_by_test_id(chart).locator("svg").first).to_be_visible()
    today = datetime.now(UTC).date().isoformat()
    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    csv = Path(download.value.path()).read_text().splitlines()
    assert csv[0] == "date,total_messages,ai_handled,avg_response_time_ms,errors"
    assert any(line.startswith(f"{today},4,") for line in csv[1:]), csv
    expect(page.get_by_test_id("daily-table")).to_contain_text("4")

    # An API key: shown once, works, revoked.
    page.goto("/keys")
    page.get_by_label("Key name").fill("ci")
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_test_id("new-key").inner_text().strip()
    assert key.startswith("gwd_")
    expect(page.get_by_test_id("key-row")).to_have_count(1)
    listed = httpx.get(f"{daemon.base_url}/api/v1/sessions", headers={"X-API-Key": key})
    assert [s["session_name"] for s in listed.json()["data"]] == ["Sales desk"]
    page.get_by_test_id("key-row").get_by_role("button", name="Revoke").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect(page.get_by_test_id("key-row")).to_have_count(0)  # the list shows live keys only
    refused = httpx.get(f"{daemon.base_url}/api/v1/sessions", headers={"X-API-Key": key})
    assert refused.status_code == 401

    # Log out: the token stops working and the pages ask for a login again.
    page.get_by_role("button", name=re.compile(r"^log ?out$", re.I)).click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/dashboard")
    expect(page).to_have_url(re.compile(r"/login$"))
    after = httpx.get(
        f"{daemon.base_url}/api/v1/sessions", headers={"Authorization": f"Bearer {token}"}
    )
    assert after.status_code == 401

    # No token ever in a URL: not in a request, not in the WebSocket's.
    assert urls and not [u for u in urls if token in u or key in u]
    assert any(u.startswith("ws://") and "/ws/sessions" in u for u in urls)


# ------------------------------------------------------------------------ offline, clean


PAGES = ("/dashboard", "/session/{id}", "/analytics/{id}", "/keys", "/no-such-page")


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (375, 740)], ids=["desktop", "phone"])
def test_every_page_works_offline_without_console_errors(
    page: Page, daemon: SimDaemon, width: int, height: int
) -> None:
    """Every page, in English and Indonesian: no request leaves for another origin, nothing is
    logged as an error (a CSP violation would be), every control has a label, nothing is wider
    than the screen; the QR modal closes on Escape."""
    with api_user(daemon) as (pin, api):
        linked = api.post("/api/v1/sessions", json={"session_name": "Toko Budi"}).json()["data"]
        api.post(f"/api/v1/sessions/{linked['session_id']}/start")
        daemon.scan(linked["session_id"], PHONE)
        daemon.inject(linked["session_id"], **{"from": CUSTOMER, "text": "Halo"})
        fresh = api.post("/api/v1/sessions", json={"session_name": "Belum"}).json()["data"]

    elsewhere: list[str] = []
    errors: list[str] = []
    page.route("**/*", lambda r: keep_local(r, daemon.base_url, elsewhere))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    for path in ("/", "/login"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        check_page(page, path, width, "en")
    log_in(page, pin)
    for language in ("en", "id"):
        if language == "id":
            choose_language(page, "id")
        for path in PAGES:
            page.goto(path.format(id=linked["session_id"]))
            page.wait_for_load_state("networkidle")
            check_page(page, path, width, language)
        page.goto("/dashboard")
        row = page.locator(f"[data-session-id='{fresh['session_id']}']")
        row.get_by_test_id("start").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_test_id("qr-image")).to_be_visible()
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
    assert not elsewhere, f"requests to other origins: {elsewhere}"
    assert not errors, f"console errors: {errors}"


LOGIN_LIMIT = "[auth]\nlogin_attempts_per_minute = 2\n"


@pytest.mark.parametrize("daemon", [LOGIN_LIMIT], indirect=True)
def test_login_by_keyboard_shows_wrong_pins_and_throttling(page: Page, daemon: SimDaemon) -> None:
    """The login page used with the keyboard alone: a wrong PIN is said to be wrong, and once
    the daemon throttles (2 failures a minute here), the page says so, with the wait."""
    page.goto("/login")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement?.id") == page.get_by_label(
            "PIN"
        ).get_attribute("id"):
            break
    else:
        raise AssertionError("Tab never reached the PIN field")
    alert = page.get_by_role("alert")
    page.keyboard.type("zzzzz9")

    def attempt() -> int:
        with page.expect_response("**/api/v1/auth/login") as answer:
            page.keyboard.press("Enter")
        return answer.value.status

    assert attempt() == 401
    expect(alert).to_have_text("Wrong PIN")
    statuses = [attempt() for _ in range(3)]
    assert statuses[-1] == 429, statuses
    expect(alert).to_contain_text(re.compile(r"Too many attempts .* \d+ s"))
    expect(page).to_have_url(re.compile(r"/login$"))


def keep_local(route: Any, origin: str, elsewhere: list[str]) -> None:
    """Let requests to the daemon through; count and refuse any other."""
    url = route.request.url
    parts = urlsplit(url)
    if url.startswith("data:") or f"{parts.scheme}://{parts.netloc}" == origin:
        route.continue_()
    else:
        elsewhere.append(url)
        route.abort()


def choose_language(page: Page, language: str) -> None:
    page.get_by_label("Language").select_option(language)
    expect(page.locator("html")).to_have_attribute("lang", language)


def check_page(page: Page, path: str, width: int, language: str) -> None:
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button, a[href]')]
            .filter(e => e.offsetParent !== null)
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !e.getAttribute('aria-labelledby') && !e.textContent.trim()
                         && !e.getAttribute('title'))
            .map(e => e.outerHTML.slice(0, 120))"""
    )
    assert not unlabelled, f"{path}: controls without a label: {unlabelled}"
    wide = page.evaluate("() => document.documentElement.scrollWidth")
    assert wide <= width, f"{path}: the page is {wide} px wide at {width} px"
    assert page.evaluate("() => document.documentElement.lang") == language, path
