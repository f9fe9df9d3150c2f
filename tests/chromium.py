"""Mails as people see them: headless Chromium lays HTML mails out at a given width, measures whether they
scroll sideways, and takes their pictures (into tests/artifacts/, which git ignores).

Starting Chromium costs about a second of CPU, so a batch of mails is laid out in one page, one frame each,
and photographed in one picture that is cut into one PNG per mail.
"""

from __future__ import annotations

import html as htmllib
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from PIL import Image

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
# Past this height a picture is split: Chromium's software compositor is not asked for one huge surface.
_MAX_PICTURE = 12000

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


def _framed(pages: Mapping[str, str], width: int, heights: Mapping[str, int]) -> str:
    """The mails one below the other, each in an iframe exactly `width` px wide: headless Chromium lays a
    window out at no less than 500 px (a 390 px screenshot is a crop of that), so the phone's width is given
    to the frame. Each frame's onload writes its document's scrollWidth, its innerWidth and its height into
    the title, which Chromium's --dump-dom returns once every frame has loaded."""
    measure = ("document.title+=' '+this.id+'='+this.contentDocument.documentElement.scrollWidth+','"
               "+this.contentWindow.innerWidth+','+this.contentDocument.documentElement.scrollHeight")
    frames = "".join(
        f'<iframe id="f{i}" style="display:block;border:0;width:{width}px;height:{heights[name]}px;" '
        f'onload="{measure}" srcdoc="{htmllib.escape(html, quote=True)}"></iframe>'
        for i, (name, html) in enumerate(pages.items()))
    return (f'<!DOCTYPE html><html><head><title>W</title></head><body style="margin:0;background:#fff;">'
            f'{frames}</body></html>')


def measure_all(pages: Mapping[str, str], width: int, tmp: Path, name: str) -> dict[str, tuple[int, int, int]]:
    """Each mail's (scrollWidth, innerWidth, scrollHeight) laid out `width` px wide, with one Chromium."""
    page = tmp / f"{name}-{width}-measure.html"
    page.write_text(_framed(pages, width, dict.fromkeys(pages, 1000)), encoding="utf-8")
    proc = _chromium(tmp, page, "800,1000", "--dump-dom")
    title = re.search(r"<title>W([^<]*)</title>", proc.stdout)
    assert title, proc.stderr[-2000:]
    found = {int(i): (int(w), int(inner), int(h)) for i, w, inner, h in re.findall(r"f(\d+)=(\d+),(\d+),(\d+)",
                                                                                    title.group(1))}
    assert len(found) == len(pages), (title.group(1), proc.stderr[-2000:])
    return {key: found[i] for i, key in enumerate(pages)}


def screenshot_all(pages: Mapping[str, str], width: int, heights: Mapping[str, int], tmp: Path) -> dict[str, Path]:
    """A picture of each whole mail `width` px wide, tests/artifacts/NAME-WIDTH.png, from as few Chromium
    runs as the heights allow."""
    ARTIFACTS.mkdir(exist_ok=True)
    batches: list[list[str]] = [[]]
    for key in pages:
        if batches[-1] and sum(heights[k] for k in batches[-1]) + heights[key] > _MAX_PICTURE:
            batches.append([])
        batches[-1].append(key)
    out: dict[str, Path] = {}
    for n, batch in enumerate(batches):
        page = tmp / f"shots-{width}-{n}.html"
        page.write_text(_framed({k: pages[k] for k in batch}, width, heights), encoding="utf-8")
        whole = tmp / f"shots-{width}-{n}.png"
        proc = _chromium(tmp, page, f"{width},{sum(heights[k] for k in batch)}", f"--screenshot={whole}")
        assert whole.exists(), proc.stderr[-2000:]
        with Image.open(whole) as img:
            top = 0
            for key in batch:
                out[key] = ARTIFACTS / f"{key}-{width}.png"
                img.crop((0, top, width, top + heights[key])).save(out[key])
                top += heights[key]
    return out


def measure(html: str, width: int, tmp: Path, name: str) -> tuple[int, int, int]:
    """(scrollWidth, innerWidth, scrollHeight) of one mail laid out `width` px wide in Chromium."""
    return measure_all({name: html}, width, tmp, name)[name]


def screenshot(html: str, width: int, height: int, tmp: Path, name: str) -> Path:
    """A picture of one whole mail `width` px wide, in tests/artifacts/."""
    return screenshot_all({name: html}, width, {name: height}, tmp)[name]
