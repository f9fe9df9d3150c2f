"""Mails as people see them: headless Chromium lays an HTML mail out at a given width, measures whether it
scrolls sideways, and takes its picture (into tests/artifacts/, which git ignores)."""

from __future__ import annotations

import html as htmllib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is not installed (apt-get install -y --no-install-recommends chromium)")


def _chromium(tmp: Path, page: Path, size: str, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{page.stem}"
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size}", *args, page.as_uri()],
            capture_output=True, text=True, timeout=120, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _framed(html: str, width: int, height: int) -> str:
    """The mail in an iframe exactly `width` px wide: headless Chromium lays a window out at no less than
    500 px (a 390 px screenshot is a crop of that), so the phone's width is given to the frame. The frame's
    onload writes its document's scrollWidth, its innerWidth and its height into the title."""
    measure = ("document.title='W='+this.contentDocument.documentElement.scrollWidth+','"
               "+this.contentWindow.innerWidth+','+this.contentDocument.documentElement.scrollHeight")
    return (f'<!DOCTYPE html><html><head><title>-</title></head><body style="margin:0;background:#fff;">'
            f'<iframe style="display:block;border:0;width:{width}px;height:{height}px;" onload="{measure}" '
            f'srcdoc="{htmllib.escape(html, quote=True)}"></iframe></body></html>')


def measure(html: str, width: int, tmp: Path, name: str) -> tuple[int, int, int]:
    """(scrollWidth, innerWidth, scrollHeight) of the mail laid out `width` px wide in Chromium."""
    page = tmp / f"{name}-{width}-measure.html"
    page.write_text(_framed(html, width, 1000), encoding="utf-8")
    proc = _chromium(tmp, page, "800,1000", "--dump-dom")
    m = re.search(r"<title>W=(\d+),(\d+),(\d+)</title>", proc.stdout)
    assert m, proc.stderr[-2000:]
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def screenshot(html: str, width: int, height: int, tmp: Path, name: str) -> Path:
    """A picture of the whole mail `width` px wide, in tests/artifacts/."""
    page = tmp / f"{name}-{width}.html"
    page.write_text(_framed(html, width, height), encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / f"{name}-{width}.png"
    out.unlink(missing_ok=True)
    proc = _chromium(tmp, page, f"{width},{height}", f"--screenshot={out}")
    assert out.exists(), proc.stderr[-2000:]
    return out
