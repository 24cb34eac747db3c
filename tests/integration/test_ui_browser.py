"""The campaign web pages in a real headless Chromium, against the whole gateway.

Maker and checker sign in with their own API keys: the maker uploads a list (30 good numbers,
a duplicate written another way, a number too short) as a care campaign and sees the
validation report; the maker's own approval is refused (maker–checker) and the page shows the
API's reason; the checker approves; the maker starts it and watches the progress bar reach
100 % and the chart fill; the report downloaded through the page (a Blob, since a link cannot
carry the bearer key) has one row per message.

Needs Debian's ``/usr/bin/chromium`` (driven by Playwright, no downloaded browsers); skipped
when it is missing.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import ConsoleMessage, Locator, Page, async_playwright, expect

from gateway.store.apikeys import ApiKeyStore
from tests.integration.conftest import MakeStack, numbers

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path("/tmp/smsgw-ui-campaign.png")
TEXT = "Chào {{ ho_ten }}, ưu đãi {{ uu_dai_vnd | vnd }} dành cho bạn. CSKH"
GOOD_ROWS = 30

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


def broadcast_csv(path: Path) -> list[str]:
    """30 subscribers, then a duplicate (written +84…) and a number that is too short."""
    good = numbers(GOOD_ROWS)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["so_dien_thoai", "ho_ten", "hang", "uu_dai_vnd"])
    names = ["Nguyễn Thị Hoa", "Trần Văn Đức", "Lê Minh Châu", "Phạm Quốc Bảo", "Đỗ Thu Hà"]
    for i, n in enumerate(good):
        writer.writerow([n, names[i % len(names)], "Vàng", 10_000 * (i + 1)])
    writer.writerow(["+84 " + good[0][1:], "Nguyễn Thị Hoa", "Vàng", 10_000])
    writer.writerow(["0901234", "Lê Thanh Dũng", "Bạc", 5_000])
    path.write_text(out.getvalue(), encoding="utf-8")
    return good


def console_watch(page: Page) -> list[str]:
    """Every script error and CSP refusal on the page (there must be none)."""
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        # a refused API call logs "Failed to load resource" as an error: that one is expected
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            problems.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    return problems


def stat_value(page: Page, within: str, label: str) -> Locator:
    """The number shown in the stat box labelled exactly ``label``."""
    label_re = re.compile(rf"^{re.escape(label)}$")
    box = page.locator(f"{within} .stat").filter(
        has=page.locator(".stat-label", has_text=label_re))
    return box.locator(".stat-value")


async def sign_in(page: Page, key: str) -> None:
    await expect(page.locator("#signin")).to_be_visible()
    await page.fill("#api-key", key)
    await page.click("#signin-button")
    await expect(page.locator("#content")).to_be_visible()
    await expect(page.locator("#who-key")).to_have_text(key[:14] + "…")


async def sign_out(page: Page) -> None:
    await page.click("#sign-out")
    await expect(page.locator("#signin")).to_be_visible()
    await expect(page.locator("#content")).to_be_hidden()


async def upload_campaign(page: Page, csv_path: Path, name: str) -> str:
    """Fill the form, upload, check the validation report; the campaign page's URL."""
    await page.click("#new-campaign")
    await page.wait_for_url("**/ui/campaigns/new")
    await page.set_input_files("#f-file", str(csv_path))
    await expect(page.locator("#column-chips")).to_contain_text("{{ ho_ten }}")
    await page.fill("#f-name", name)
    await page.fill("#f-text", TEXT)
    await page.select_option("#f-class", "care")
    await page.fill("#f-sender", "CSKH")
    await page.click("#submit")
    report = page.locator("#report")
    await expect(report).to_be_visible(timeout=30_000)
    await expect(stat_value(page, "#report-upload", "accepted")).to_have_text(str(GOOD_ROWS))
    await expect(stat_value(page, "#report-upload", "duplicates")).to_have_text("1")
    await expect(stat_value(page, "#report-upload", "rejected")).to_have_text("1")
    rejected = page.locator("#rows-rejected_rows tbody tr")
    await expect(rejected).to_have_count(1)
    await expect(rejected).to_contain_text("0901234")
    await expect(rejected.locator("td").first).to_have_text(str(GOOD_ROWS + 3))
    await expect(page.locator("#report-samples .sms").first).to_contain_text("Chào")
    href = await page.get_attribute("#open-campaign", "href")
    assert href is not None and href.startswith("/ui/campaigns/")
    return href


async def action(page: Page, name: str) -> None:
    button = page.locator(f'#actions button[data-action="{name}"]')
    await expect(button).to_be_enabled()
    await button.click()


async def download_report(page: Page, tmp_path: Path) -> list[dict[str, str]]:
    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    await expect(page.locator("#download-status")).to_contain_text("Saved")
    return list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8-sig"))))


async def run_flow(page: Page, base: str, *, maker: str, checker: str,
                   tmp_path: Path) -> list[dict[str, str]]:
    """The whole maker/checker story in the browser; the rows of the downloaded report."""
    csv_path = tmp_path / "khach_hang_tri_an.csv"
    broadcast_csv(csv_path)
    await page.goto(f"{base}/ui/")
    await sign_in(page, maker)
    await expect(page.locator("#list-empty")).to_be_visible()

    await upload_campaign(page, csv_path, "Tri ân khách hàng tháng 6")
    await page.click("#open-campaign")
    status = page.locator("#c-status")
    await expect(status).to_have_text("draft")
    await expect(page.locator("#samples-table tbody tr").first).to_contain_text("UCS2")
    await expect(page.locator("#estimate-list")).to_contain_text(str(GOOD_ROWS))

    # The maker cannot approve their own campaign: the API's 403 reason is shown.
    await action(page, "approve")
    await expect(page.locator("#action-error")).to_be_visible()
    await expect(page.locator("#action-error")).to_contain_text("403")
    await expect(status).to_have_text("draft")

    await sign_out(page)
    await sign_in(page, checker)
    await action(page, "approve")
    await expect(status).to_have_text("approved")
    await expect(page.locator("#action-error")).to_be_hidden()

    await sign_out(page)
    await sign_in(page, maker)
    await expect(page.locator('#actions button[data-action="approve"]')).to_be_disabled()
    await action(page, "start")
    await expect(page.locator("#progress")).to_have_attribute("aria-valuenow", "100",
                                                              timeout=60_000)
    await expect(status).to_have_text("completed", timeout=60_000)
    for name in ("start", "pause", "resume", "cancel"):
        await expect(page.locator(f'#actions button[data-action="{name}"]')).to_be_disabled()
    await expect(stat_value(page, "#counts", "delivered")).to_have_text(str(GOOD_ROWS))
    await expect(page.locator('#chart-svg polyline[data-series="delivered"]')).to_have_count(1)
    await expect(page.locator("#chart-svg .legend").first).to_contain_text(f"delivered {GOOD_ROWS}")
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    rows = await download_report(page, tmp_path)

    await page.goto(f"{base}/ui/")  # the list shows it, finished
    row = page.locator("#campaigns tbody tr")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("completed")
    await expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    return rows


async def test_maker_checker_campaign_in_the_browser(make_stack: MakeStack,
                                                     tmp_path: Path) -> None:
    st = await make_stack()
    assert st.gw.pool is not None
    keys = ApiKeyStore(st.gw.pool)
    tag = uuid.uuid4().hex[:8]
    _, maker = await keys.create(f"ui-maker-{tag}", ("campaigns:write", "messages:send"))
    _, checker = await keys.create(f"ui-checker-{tag}", ("campaigns:approve",))

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                          args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(locale="vi-VN", accept_downloads=True,
                                                viewport={"width": 1200, "height": 900})
            page = await context.new_page()
            problems = console_watch(page)
            rows = await run_flow(page, st.base, maker=maker, checker=checker,
                                  tmp_path=tmp_path)
        finally:
            await browser.close()

    assert problems == []
    # one row per message, then the rows that were not sent (no encoding), then a summary
    numbered = [r for r in rows if r["line"].isdigit()]
    sent = [r for r in numbered if r["encoding"]]
    assert len(sent) == GOOD_ROWS
    assert {r["status"] for r in sent} == {"delivered"}
    assert all("*" in r["msisdn"] for r in sent), "numbers are masked by default"
    # the number given twice goes to its later line (32); line 2 is the duplicate
    assert sorted(int(r["line"]) for r in sent) == list(range(3, GOOD_ROWS + 3))
    not_sent = {r["status"]: r["line"] for r in numbered if not r["encoding"]}
    assert not_sent == {"duplicate": "2", "rejected": str(GOOD_ROWS + 3)}


async def test_pages_are_public_shells(make_stack: MakeStack) -> None:
    """No key needed for the pages and their scripts, and no data in them; the data API still
    needs a key."""
    st = await make_stack()
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{st.base}/ui/") as resp:
            html = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        scripts = re.findall(r'src="(/ui/static/[^"]+)"', html)
        assert len(scripts) == 2 and all("?v=" in s for s in scripts)
        for src in scripts:
            async with anonymous.get(f"{st.base}{src}") as resp:
                assert resp.status == 200 and "javascript" in resp.content_type
        async with anonymous.get(f"{st.base}/ui/campaigns/{uuid.uuid4()}") as resp:
            assert resp.status == 200  # a shell: whether the campaign exists is the API's to say
        async with anonymous.get(f"{st.base}/ui/campaigns/<script>") as resp:
            assert resp.status == 404 and "<script>" not in await resp.text()
        async with anonymous.get(f"{st.base}/ui/static/../ui.py") as resp:
            assert resp.status == 404
        async with anonymous.get(f"{st.base}/v1/campaigns") as resp:
            assert resp.status == 401
