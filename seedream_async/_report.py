"""
The contact sheet: a batch's results lines as self-contained HTML pages, inputs beside outputs.

Each page is one file with inline CSS and no script, font or image from elsewhere: it opens
from disk, offline. Thumbnails are small JPEGs made locally with Pillow (the ``report``
extra) into ``STEM_files/`` beside the page; without Pillow the page is still written and
says how to install it. Images known only by URL are links, never ``<img>``: opening the
page makes no request off the machine. Every text from the results is escaped, and only
http(s) URLs become links (a hostile service writes the URLs and error messages).

Results lines are read leniently: a field that is missing or of another type is shown as
unknown, a line that is not a JSON object is counted and skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import html
import importlib
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import attrs

#: Cards per page: a 10,000-input batch stays quick to open.
PAGE_SIZE = 500
#: The longest side of a thumbnail, in pixels.
THUMB_PX = 160
#: Seconds between two rewrites of a live report.
LIVE_EVERY = 5.0
INSTALL = "pip install 'seedream-async[report]'"
#: Statuses shown first, in this order; any other status comes after them, succeeded last.
_FIRST = ("failed", "unknown", "error", "download_failed")
_LAST = "succeeded"


def _text(line: Mapping[str, Any], key: str) -> str | None:
    value = line.get(key)
    return value if isinstance(value, str) else None


def _number(line: Mapping[str, Any], key: str) -> float | None:
    value = line.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _texts(line: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = line.get(key)
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _when(line: Mapping[str, Any], key: str) -> float | None:
    """An ISO 8601 time of the line as Unix seconds (None when absent or unreadable)."""
    text = _text(line, key)
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@attrs.frozen(kw_only=True)
class Row:
    """One results line, as the page shows it."""

    index: int | None
    status: str
    prompt: str | None = None
    inputs: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    task_id: str | None = None
    credits: float | None = None
    error: str | None = None
    fail_code: str | None = None
    fail_msg: str | None = None
    model: str | None = None
    aspect_ratio: str | None = None
    quality: str | None = None
    created: float | None = None
    completed: float | None = None
    #: When the line was written (Unix seconds).
    at: float | None = None
    from_journal: bool = False
    #: Sent by an interrupted earlier run, tracked to its end by this one.
    resumed: bool = False

    @property
    def paid_earlier(self) -> bool:
        """True when its credits were spent by an earlier run (as the batch's summary counts)."""
        return self.from_journal or self.resumed

    @classmethod
    def of(cls, line: Mapping[str, Any]) -> Row:
        """The row of a parsed results line; fields of the wrong type count as absent."""
        index = line.get("index")
        return cls(
            index=index if isinstance(index, int) and not isinstance(index, bool) else None,
            status=_text(line, "status") or "unknown",
            prompt=_text(line, "prompt"),
            inputs=_texts(line, "inputs"),
            urls=_texts(line, "urls"),
            files=_texts(line, "files"),
            task_id=_text(line, "task_id"),
            credits=_number(line, "credits"),
            error=_text(line, "error"),
            fail_code=_text(line, "fail_code"),
            fail_msg=_text(line, "fail_msg"),
            model=_text(line, "model"),
            aspect_ratio=_text(line, "aspect_ratio"),
            quality=_text(line, "quality"),
            created=_when(line, "created"),
            completed=_when(line, "completed"),
            at=_number(line, "at"),
            from_journal=line.get("from_journal") is True,
            resumed=line.get("resumed") is True,
        )

    @property
    def seconds(self) -> float | None:
        """Seconds from the task's creation to its result, when both are known."""
        if self.created is None or self.completed is None:
            return None
        return self.completed - self.created

    @property
    def rank(self) -> tuple[int, int]:
        """Sort key: failures first, then by input."""
        order = _FIRST.index(self.status) if self.status in _FIRST else len(_FIRST)
        order += self.status == _LAST
        return order, self.index if self.index is not None else -1


def read_results(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a results file, and how many lines were not one."""
    lines: list[dict[str, Any]] = []
    bad = 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):
                bad += 1
                continue
            if isinstance(value, dict):
                lines.append(value)
            else:
                bad += 1
    return lines, bad


@attrs.frozen(kw_only=True)
class Summary:
    """The header's figures."""

    counts: dict[str, int]
    done: int
    total: int | None
    credits: float
    credits_earlier: float
    credits_failed: float
    #: Seconds from the first start (or result) to the last result, of this run's lines.
    wall: float | None
    #: Results of this run (not taken from the journal of an earlier one).
    this_run: int
    start: float | None
    bad_lines: int = 0

    @classmethod
    def of(cls, rows: Sequence[Row], *, total: int | None = None, bad_lines: int = 0) -> Summary:
        """Sum up ``rows``; ``total`` is how many inputs the batch has, when known."""
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        this_run = [r for r in rows if not r.from_journal]
        starts = [t for r in this_run for t in (r.created, r.at) if t is not None]
        ends = [r.at if r.at is not None else r.completed for r in this_run]
        known_ends = [t for t in ends if t is not None]
        start = min(starts) if starts else None
        wall = max(known_ends) - start if start is not None and known_ends else None
        return cls(
            counts=counts,
            done=len(rows),
            total=total,
            credits=sum(r.credits or 0.0 for r in this_run if not r.resumed),
            credits_earlier=sum(r.credits or 0.0 for r in rows if r.paid_earlier),
            credits_failed=sum(r.credits or 0.0 for r in rows if r.status != _LAST),
            wall=wall,
            this_run=len(this_run),
            start=start,
            bad_lines=bad_lines,
        )

    @property
    def throughput(self) -> float | None:
        """Results per minute of this run."""
        return self.this_run / self.wall * 60 if self.wall else None


# --- thumbnails ------------------------------------------------------------------------------


@attrs.frozen
class Thumb:
    """A thumbnail's path relative to the page."""

    src: str


class Thumbnailer:
    """Makes (or reuses) one small JPEG per image file, named for the file's path and version."""

    def __init__(self, directory: Path) -> None:
        """Thumbnails go into ``directory``, a sibling of the page (named relative to it)."""
        self.directory = directory
        self._prefix = quote(directory.name)
        self.made = 0
        self._made_lock = threading.Lock()
        self._ready: dict[Path, Thumb | None] = {}
        try:
            # By name, typed Any: Pillow's own types changed across the releases the extra
            # allows, and only five of its oldest calls are used.
            self._image: Any = importlib.import_module("PIL.Image")
        except ImportError:
            self.available = False
        else:
            self.available = True

    def prepare(self, paths: Iterable[Path]) -> None:
        """Make the thumbnails of ``paths`` on every core: decoding a 2K PNG takes ~0.1 s,
        and Pillow lets go of the GIL while it decodes and encodes."""
        todo = list(dict.fromkeys(p for p in paths if p not in self._ready))
        if not self.available or not todo:
            return
        workers = min(8, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(workers, "seedream-thumbnails") as pool:
            self._ready.update(zip(todo, pool.map(self.thumb, todo), strict=True))

    def thumb(self, path: Path) -> Thumb | None:
        """The thumbnail of the image at ``path``; None if it is missing or not an image."""
        if path in self._ready:
            return self._ready[path]
        if not self.available:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        key = f"{path.resolve()}\0{stat.st_mtime_ns}\0{stat.st_size}"
        name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24] + ".jpg"
        target = self.directory / name
        if not target.exists() and not self._make(path, target):
            return None
        return Thumb(f"{self._prefix}/{name}")

    def _make(self, source: Path, target: Path) -> bool:
        try:
            with self._image.open(source) as image:
                image.draft("RGB", (THUMB_PX, THUMB_PX))
                image.thumbnail((THUMB_PX, THUMB_PX))
                small = image.convert("RGB")
        except (OSError, ValueError, self._image.DecompressionBombError):
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        with _atomic(target) as out:
            small.save(out, "JPEG", quality=70, optimize=True)
        with self._made_lock:
            self.made += 1
        return True


@contextlib.contextmanager
def _atomic(target: Path) -> Iterator[BinaryIO]:
    """A file written beside ``target`` and renamed over it: readers see old or new, whole."""
    # Not mkstemp: its 0600 would make the page unreadable to anyone the umask allows.
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with temp.open("xb") as f:
            yield f
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


# --- the page --------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f6;color:#222}
header{background:#fff;padding:12px 20px;border-bottom:1px solid #ddd}
h1{font-size:18px;margin:0 0 8px}h2{font-size:15px;margin:18px 20px 6px}
.figs{display:flex;flex-wrap:wrap;gap:6px 22px;margin:0;padding:0;list-style:none}
.figs b{font-weight:600}nav{margin:8px 0 0}nav a{margin-right:12px}
.note{background:#fff6d5;border:1px solid #e6c200;padding:6px 10px;margin:8px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px;padding:0 20px 20px}
.card{background:#fff;border:1px solid #ddd;border-left:5px solid #999;border-radius:4px;
padding:8px;width:360px;box-sizing:border-box}
.s-succeeded{border-left-color:#2a9d3a}.s-failed,.s-error,.s-download_failed{border-left-color:#d33}
.s-unknown{border-left-color:#e6a100}
.imgs{display:flex;gap:6px;align-items:center}.imgs>div{display:flex;flex-wrap:wrap;gap:4px;
flex:1;min-height:80px;align-content:center}
.imgs img{width:80px;height:80px;object-fit:contain;background:#eee}
.ph{width:80px;height:80px;background:#eee;font-size:10px;overflow:hidden;
word-break:break-all;display:flex;align-items:center;justify-content:center;text-align:center}
.arrow{color:#888}.prompt{margin:6px 0;white-space:pre-wrap;word-break:break-word}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 8px;margin:0;font-size:12px}
dt{color:#666}dd{margin:0;word-break:break-all}.err{color:#b00;font-size:12px;
white-space:pre-wrap;word-break:break-word;margin:6px 0 0}
svg{background:#fafafa;border:1px solid #ddd}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def link(url: str, label: str | None = None) -> str:
    """An escaped link when ``url`` is http(s) with a host, else the escaped text alone."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return _e(label if label is not None else url)
    return f'<a href="{_e(url)}" rel="noopener noreferrer nofollow">{_e(label or url)}</a>'


def _credits(value: float) -> str:
    return f"{value:g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min {rest} s"


def chart(rows: Sequence[Row], start: float | None, width: int = 600, height: int = 120) -> str:
    """An inline SVG of completions and failures (cumulative) over this run's time."""
    times = sorted(
        (r.at, r.status == _LAST) for r in rows if r.at is not None and not r.from_journal
    )
    if start is None or not times:
        return ""
    span = max(times[-1][0] - start, 1e-9)
    peak = max(sum(ok for _, ok in times), sum(not ok for _, ok in times), 1)
    step = max(1, len(times) // 300)  # a few hundred points draw the same line as 10,000
    ok_points, bad_points, ok, bad = [f"0,{height}"], [f"0,{height}"], 0, 0
    for n, (at, good) in enumerate(times):
        ok, bad = ok + good, bad + (not good)
        if n % step and n != len(times) - 1:
            continue
        x = f"{(at - start) / span * width:.1f}"
        ok_points.append(f"{x},{height - ok / peak * (height - 4):.1f}")
        bad_points.append(f"{x},{height - bad / peak * (height - 4):.1f}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 16}"'
        f' viewBox="0 0 {width} {height + 16}" role="img" aria-label="results over time">'
        f'<polyline fill="none" stroke="#2a9d3a" stroke-width="2" points="{" ".join(ok_points)}"/>'
        f'<polyline fill="none" stroke="#d33" stroke-width="2" points="{" ".join(bad_points)}"/>'
        f'<text x="2" y="12" font-size="11">{peak}</text>'
        f'<text x="2" y="{height + 13}" font-size="11">0 s</text>'
        f'<text x="{width - 2}" y="{height + 13}" font-size="11" text-anchor="end">'
        f"{_e(_duration(span))}</text></svg>"
        '<p style="margin:2px 0;font-size:12px"><span style="color:#2a9d3a">&#9644;</span>'
        f' succeeded ({ok}) <span style="color:#d33">&#9644;</span> not succeeded ({bad})</p>'
    )


#: One image of the results (a path or a URL) and its alt text, as HTML.
ImageHtml = Callable[[str, str], str]


@attrs.frozen(kw_only=True)
class Page:
    """One page of the report: its file name and its HTML."""

    name: str
    html: str


def page_names(first: str, count: int) -> list[str]:
    """``first`` (say ``report.html``), then ``report-2.html``, ...: one name per page."""
    stem, dot, suffix = first.rpartition(".")
    stem, suffix = (stem, f".{suffix}") if dot and stem else (first, ".html")
    return [first] + [f"{stem}-{n + 1}{suffix}" for n in range(1, max(count, 1))]


def render(
    rows: Sequence[Row],
    summary: Summary,
    *,
    first: str,
    image: ImageHtml,
    title: str,
    pillow: bool,
) -> list[Page]:
    """Every page of the report; ``image(source, alt)`` gives one image's HTML."""
    ordered = sorted(rows, key=lambda r: r.rank)
    chunks = [ordered[i : i + PAGE_SIZE] for i in range(0, len(ordered), PAGE_SIZE)] or [[]]
    names = page_names(first, len(chunks))
    first_page: dict[str, int] = {}
    for number, chunk in enumerate(chunks):
        for row in chunk:
            first_page.setdefault(row.status, number)
    header = _header(summary, rows, title, pillow)
    pages = []
    for number, chunk in enumerate(chunks):
        nav = _nav(summary, names, first_page, number)
        body = _cards(chunk, image)
        pages.append(Page(name=names[number], html=_document(title, header + nav, body)))
    return pages


def _document(title: str, header: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # No script, no request elsewhere: the page is a document, whatever the results hold.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\';'
        " img-src 'self' file: data:; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header>{header}</header>{body}</body></html>\n"
    )


def _header(summary: Summary, rows: Sequence[Row], title: str, pillow: bool) -> str:
    done = f"{summary.done}" + (f" of {summary.total}" if summary.total is not None else "")
    figures = [("results", done)]
    figures += [(status, str(n)) for status, n in sorted(summary.counts.items(), key=_by_rank)]
    figures.append(("credits, this run", _credits(summary.credits)))
    if summary.credits_earlier:
        figures.append(("credits, earlier runs", _credits(summary.credits_earlier)))
    figures.append(("credits charged for failures", _credits(summary.credits_failed)))
    if summary.wall is not None:
        figures.append(("wall time", _duration(summary.wall)))
    if summary.throughput is not None:
        figures.append(("throughput", f"{summary.throughput:.1f} / min"))
    items = "".join(f"<li>{_e(k)}: <b>{_e(v)}</b></li>" for k, v in figures)
    notes = ""
    if not pillow:
        notes += f'<p class="note">No thumbnails: they need Pillow, <code>{_e(INSTALL)}</code>.</p>'
    if summary.bad_lines:
        notes += (
            f'<p class="note">{summary.bad_lines} line(s) of the results were not JSON objects.</p>'
        )
    return f'<h1>{_e(title)}</h1><ul class="figs">{items}</ul>{notes}{chart(rows, summary.start)}'


def _by_rank(item: tuple[str, int]) -> tuple[int, int]:
    return Row(index=0, status=item[0]).rank


def _nav(summary: Summary, names: Sequence[str], first_page: Mapping[str, int], here: int) -> str:
    statuses = sorted(first_page, key=lambda s: Row(index=0, status=s).rank)
    filters = " ".join(
        f'<a href="{_e(_target(names, first_page[s], here))}#s-{_e(s)}">'
        f"{_e(s)} ({summary.counts.get(s, 0)})</a>"
        for s in statuses
    )
    pages = ""
    if len(names) > 1:
        pages = " pages: " + " ".join(
            f"<b>{n + 1}</b>" if n == here else f'<a href="{_e(quote(name))}">{n + 1}</a>'
            for n, name in enumerate(names)
        )
    return f"<nav>show: {filters}{pages}</nav>"


def _target(names: Sequence[str], page: int, here: int) -> str:
    return "" if page == here else quote(names[page])


def _cards(rows: Sequence[Row], image: ImageHtml) -> str:
    parts: list[str] = []
    status = None
    for row in rows:
        if row.status != status:
            if status is not None:
                parts.append("</div></section>")
            status = row.status
            parts.append(f'<section><h2 id="s-{_e(status)}">{_e(status)}</h2><div class="cards">')
        parts.append(card(row, image))
    if status is not None:
        parts.append("</div></section>")
    return "".join(parts)


def card(row: Row, image: ImageHtml) -> str:
    """One input's card: its images before and after, the prompt and the facts."""
    inputs = "".join(image(source, f"input {n + 1}") for n, source in enumerate(row.inputs))
    outputs = [image(path, f"output {n + 1}") for n, path in enumerate(row.files)]
    if not row.files:
        outputs = [image(url, f"output {n + 1}") for n, url in enumerate(row.urls)]
    facts = [
        ("status", row.status + _provenance(row)),
        ("input", str(row.index) if row.index is not None else "?"),
        ("model", row.model or "?"),
        ("shape", f"{row.aspect_ratio or '?'} / {row.quality or '?'}"),
        ("credits", _credits(row.credits) if row.credits is not None else "-"),
        ("time", _duration(row.seconds) if row.seconds is not None else "-"),
        ("task", row.task_id or "-"),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    links = " ".join(link(u, f"result {n + 1}") for n, u in enumerate(row.urls))
    if links:
        dl += f"<dt>urls</dt><dd>{links}</dd>"
    error = ""
    if row.fail_code or row.fail_msg:
        error = f'<p class="err">{_e(row.fail_code or "?")}: {_e(row.fail_msg or "")}</p>'
    elif row.error:
        error = f'<p class="err">{_e(row.error)}</p>'
    anchor = f' id="i-{row.index}"' if row.index is not None else ""
    return (
        f'<article class="card s-{_e(row.status)}"{anchor} data-status="{_e(row.status)}">'
        f'<div class="imgs"><div>{inputs}</div><span class="arrow">&#8594;</span>'
        f"<div>{''.join(outputs) or _placeholder('no result')}</div></div>"
        f'<p class="prompt">{_e(row.prompt or "")}</p><dl>{dl}</dl>{error}</article>'
    )


def _provenance(row: Row) -> str:
    if row.from_journal:
        return " (earlier run)"
    return " (sent by an earlier run)" if row.resumed else ""


def _placeholder(text: str, title: str = "") -> str:
    hint = f' title="{_e(title)}"' if title else ""
    return f'<span class="ph"{hint}>{_e(text)}</span>'


def _is_url(source: str) -> bool:
    return "://" in source


class _Images:
    """Turns an image source of the results (a path or a URL) into its HTML."""

    def __init__(self, thumbs: Thumbnailer, bases: Sequence[Path]) -> None:
        self._thumbs = thumbs
        self._bases = bases

    def __call__(self, source: str, alt: str) -> str:
        if _is_url(source):
            # Never an <img>: the page must open without a request off the machine.
            return f'<span class="ph" title="{_e(source)}">{link(source, "remote " + alt)}</span>'
        path = self._find(Path(source))
        if path is None:
            return _placeholder("missing file", source)
        thumb = self._thumbs.thumb(path)
        if thumb is None:
            return _placeholder(alt if not self._thumbs.available else "not an image", source)
        return (
            f'<img src="{_e(thumb.src)}" alt="{_e(alt)}" title="{_e(source)}"'
            f' width="{THUMB_PX // 2}" height="{THUMB_PX // 2}" loading="lazy" decoding="async">'
        )

    def local_files(self, rows: Iterable[Row]) -> Iterator[Path]:
        """Every image file the rows show (to make their thumbnails before the page)."""
        for row in rows:
            for source in (*row.inputs, *(row.files or row.urls)):
                if not _is_url(source) and (path := self._find(Path(source))) is not None:
                    yield path

    def _find(self, path: Path) -> Path | None:
        if path.is_absolute():
            return path if path.is_file() else None
        for base in self._bases:
            if (base / path).is_file():
                return base / path
        return None


@attrs.frozen(kw_only=True)
class Written:
    """What ``write_report`` wrote."""

    pages: tuple[Path, ...]
    thumbnails_made: int
    pillow: bool
    summary: Summary


def write_report(
    lines: Iterable[Mapping[str, Any]],
    out: Path,
    *,
    total: int | None = None,
    bad_lines: int = 0,
    bases: Sequence[Path] = (),
    title: str = "seedream batch",
) -> Written:
    """Write the report's pages for ``lines`` (results lines) as ``out`` and its siblings.

    Relative image paths are looked up from the working directory, then in ``bases``.
    Every page is replaced atomically: an open page is always whole.
    """
    rows = [Row.of(line) for line in lines]
    summary = Summary.of(rows, total=total, bad_lines=bad_lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.name.removesuffix(".html").removesuffix(".htm") or out.name
    thumbs = Thumbnailer(out.parent / f"{stem}_files")
    images = _Images(thumbs, [Path.cwd(), *bases])
    thumbs.prepare(images.local_files(rows))
    pages = render(
        rows, summary, first=out.name, image=images, title=title, pillow=thumbs.available
    )
    written = []
    for page in pages:
        target = out.parent / page.name
        with _atomic(target) as f:
            f.write(page.html.encode())
        written.append(target)
    return Written(
        pages=tuple(written),
        thumbnails_made=thumbs.made,
        pillow=thumbs.available,
        summary=summary,
    )


class LiveReport:
    """A batch's report rewritten while it runs: at once, at most every ``LIVE_EVERY``
    seconds (in a thread, off the event loop; less often when a rewrite is slow), and a
    last time when the batch ends."""

    def __init__(self, out: Path, *, total: int | None, every: float = LIVE_EVERY) -> None:
        self.out = out
        self._total = total
        self._every = every
        self._lines: list[Mapping[str, Any]] = []
        self._loop = asyncio.get_running_loop()
        self._last: float | None = None
        #: Seconds the last rewrite took.
        self._took = 0.0
        #: Lines on the page now: a slow rewrite never replaces a newer one (lines only grow).
        self._shown = -1
        self._order = threading.Lock()
        self._writing: asyncio.Task[Written | None] | None = None
        self.writes = 0

    def add(self, line: Mapping[str, Any]) -> None:
        """One more results line; starts a rewrite if the last one is old enough."""
        self._lines.append(line)
        self._maybe_write()

    def _maybe_write(self) -> None:
        if self._writing is not None:
            if not self._writing.done():
                return
            self._writing.result()  # a failed rewrite (the disk) is the batch's error
            self._writing = None
        now = self._loop.time()
        # A rewrite holds the GIL the batch's loop needs (about 1.4 s for 10,000 lines, warm):
        # never more than a tenth of the time, however long the batch.
        every = max(self._every, 10 * self._took)
        if self._last is not None and now - self._last < every:
            return
        self._last = now
        self._writing = asyncio.create_task(self._write())

    def start(self) -> None:
        """Write the (empty) page now, so it can be opened from the first second."""
        self._maybe_write()

    async def _write(self) -> Written | None:
        started = self._loop.time()
        written = await asyncio.to_thread(self._write_lines, list(self._lines))
        self._took = self._loop.time() - started
        return written

    def _write_lines(self, lines: list[Mapping[str, Any]]) -> Written | None:
        with self._order:
            if len(lines) < self._shown:
                return None
            written = write_report(lines, self.out, total=self._total)
            self._shown = len(lines)
            self.writes += 1
            return written

    async def finish(self) -> Written:
        """Wait for a rewrite under way, then write the final page."""
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
            self._writing = None
        written = await asyncio.to_thread(self._write_lines, list(self._lines))
        assert written is not None, "the last lines are the most lines"
        return written

    def abandon(self) -> None:
        """The batch stopped early (Ctrl-C, an error): write the page as far as it got, now,
        blocking (the loop is being torn down; a rewrite under way is waited for)."""
        self._write_lines(list(self._lines))
