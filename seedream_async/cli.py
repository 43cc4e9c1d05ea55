"""
``seedream-async``: batch edits, single edits, task status and credits from a shell.

The only module that prints. Every command takes ``--simulate`` to run against an
in-process simulator with no key and no network. Exit codes: 0 all went well, 1 some edits
failed or ended unknown, 2 bad input (arguments, manifest, missing key), 3 the service
refused or could not be reached, 70 an unexpected error (a bug: please report it), 130
interrupted. No traceback is printed; ``-v`` logs one for an unexpected error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import difflib
import glob
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import aiohttp
import attrs

from . import __version__
from ._allocator import warm_allocator
from ._batch import BatchItem, BatchProgress
from ._catalog import MODELS, ModelSpec, typed_models
from ._client import SeedreamClient
from ._config import API_KEY_ENV, REDIS_URL_ENV, Settings, resolve_api_key, resolve_redis_url
from ._downloads import Downloader
from ._errors import (
    ApiError,
    CoordinatorUnavailable,
    ExtraNotInstalled,
    InvalidRequest,
    JournalError,
    ReceiverError,
    SeedreamError,
    ServiceUnreachable,
    TaskFailed,
    TaskTimeout,
)
from ._journal import Journal, Stage
from ._models import (
    MODEL,
    AspectRatio,
    EditResult,
    LocalImage,
    Quality,
    TaskRecord,
    TaskRequest,
)
from ._receiver import CallbackReceiver
from ._redis import RedisCoordinator
from ._refetch import Fetched, Outcome, fetch_missing, rewrite_results, updated_line
from ._report import INSTALL as REPORT_INSTALL
from ._report import LiveReport, Written, read_results, write_report
from ._wire import record_to_wire
from .simulator import (
    COMMAND_LINE_DEFAULTS,
    Simulator,
    SimulatorConfig,
    run_command_line,
    window,
)
from .simulator import add_arguments as add_simulator_arguments

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_SERVICE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BUG = 70  # EX_SOFTWARE: an error the SDK did not expect
DEFAULT_CREATE_RATE = (20, 10.0)

EPILOG = f"""
examples:
  seedream-async batch examples/manifest.jsonl --simulate --download-to out/images
  {API_KEY_ENV}=... seedream-async batch edits.jsonl --journal edits.journal --out results.jsonl
  seedream-async edit --prompt "make the sky purple" --image https://example.com/a.png
  seedream-async task task_seedream_1765172101886
  seedream-async credits

A manifest is JSON Lines, one edit per line:
  {{"prompt": "...", "image_urls": ["https://..."], "aspect_ratio": "16:9", "quality": "high"}}
or CSV with a header (prompt,image_urls,aspect_ratio,quality; image URLs separated by '|').

Callbacks: --listen HOST:PORT serves the callback receiver, and --public-url is what the
service must call (a tunnel or load balancer in front of it). Without --listen, tasks are
polled. With a --journal, an interrupted or killed batch resumes where it stopped and never
pays twice: run the same command again.
"""


class UsageError(Exception):
    """Bad input from the command line or the manifest (exit 2)."""


# --- the manifest ---------------------------------------------------------------------------

#: How many bad manifest lines are reported in one pass.
MAX_REPORTED = 20
_TRUE, _FALSE = frozenset(("1", "true", "yes", "y")), frozenset(("0", "false", "no", "n"))


class ManifestError(UsageError):
    """A manifest line that is not an edit; ``line`` is its 1-based number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"{line}: {message}")
        self.line = line


def read_manifest(path: Path, model: str = MODEL) -> Iterator[TaskRequest]:
    """Yield the manifest's requests lazily; ``UsageError`` names the first bad line.

    A line's ``"model"`` says which model it is for; ``model`` is for the lines without one."""
    for item in _manifest_items(path, model):
        if isinstance(item, ManifestError):
            raise UsageError(f"{path}:{item}")
        yield item


def _manifest_items(path: Path, model: str = MODEL) -> Iterator[TaskRequest | ManifestError]:
    """Each line's request, or the error that line has (reading goes on after one)."""
    try:
        with path.open("rb") as f:
            lines = _decoded_lines(f)
            rows = _csv_rows(lines) if path.suffix.lower() == ".csv" else _jsonl_rows(lines)
            for line, fields in rows:
                yield (
                    fields
                    if isinstance(fields, ManifestError)
                    else _request(line, fields, path, model)
                )
    except OSError as e:
        raise UsageError(f"cannot read manifest {path}: {e.strerror or e}") from e


def _decoded_lines(f: IO[bytes]) -> Iterator[tuple[int, str | ManifestError]]:
    """Lines as text (a UTF-8 byte-order mark allowed, as Excel writes it), numbered."""
    for number, raw in enumerate(f, start=1):
        try:
            yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            yield number, ManifestError(number, f"not UTF-8 (byte {e.start + 1}); save as UTF-8")


def _jsonl_rows(
    lines: Iterator[tuple[int, str | ManifestError]],
) -> Iterator[tuple[int, dict[str, Any] | ManifestError]]:
    for line, text in lines:
        if isinstance(text, ManifestError):
            yield line, text
            continue
        if not text.strip():
            continue
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as e:
            yield line, ManifestError(line, f"not JSON ({e.msg})")
            continue
        except RecursionError:
            yield line, ManifestError(line, "JSON nested too deeply")
            continue
        if not isinstance(fields, dict):
            yield line, ManifestError(line, "expected a JSON object")
            continue
        yield line, fields


def _csv_rows(
    lines: Iterator[tuple[int, str | ManifestError]],
) -> Iterator[tuple[int, dict[str, Any] | ManifestError]]:
    errors: list[ManifestError] = []

    def texts() -> Iterator[str]:
        for _, text in lines:
            if isinstance(text, ManifestError):
                errors.append(text)
                yield "\n"  # keep the reader's line count; the error is reported instead
            else:
                yield text

    reader = csv.DictReader(texts())
    for row in reader:
        while errors:
            error = errors.pop(0)
            yield error.line, error
        fields: dict[str, Any] = {k: v for k, v in row.items() if k and v not in (None, "")}
        if not fields:
            continue
        yield reader.line_num, _csv_fields(reader.line_num, fields)
    for error in errors:
        yield error.line, error


def _csv_fields(line: int, fields: dict[str, Any]) -> dict[str, Any] | ManifestError:
    if None in fields or any(isinstance(v, list) for v in fields.values()):
        return ManifestError(line, "more values than header columns")
    if "image_urls" in fields:
        urls = fields["image_urls"]
        fields["image_urls"] = [u for u in urls.replace("|", " ").split() if u]
    if "nsfw_checker" in fields:
        flag = fields["nsfw_checker"].strip().lower()
        if flag not in _TRUE | _FALSE:
            return ManifestError(line, f"nsfw_checker must be true or false, got {flag!r}")
        fields["nsfw_checker"] = flag in _TRUE
    return fields


def _request(
    line: int, fields: dict[str, Any], manifest: Path, default_model: str
) -> TaskRequest | ManifestError:
    """The line's request, or one error naming every problem of the line (not the first)."""
    model = fields.pop("model", default_model)
    spec = MODELS.get(model) if isinstance(model, str) else None
    if spec is None:
        close = difflib.get_close_matches(str(model), list(MODELS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ManifestError(
            line, f"model {model!r} is not a typed model{hint}; `seedream-async models` lists them"
        )
    names = [f.name for f in spec.fields]
    problems = []
    if unknown := set(fields) - {*names, "extra_input"}:
        hints = []
        for name in sorted(unknown):
            close = difflib.get_close_matches(name, names, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        problems.append(
            f"unknown field(s) {', '.join(hints)} for {spec.model} (its fields: "
            f"{', '.join(names)}; extra_input for any other)"
        )
    known = {name: value for name, value in fields.items() if name not in unknown}
    _csv_numbers(spec, known)
    urls = known.get("image_urls")
    if isinstance(urls, list):
        # No URL scheme: a file, relative to the manifest (uploaded before createTask).
        known["image_urls"] = [
            manifest.parent / u if isinstance(u, str) and u and "://" not in u else u for u in urls
        ]
    try:
        request = spec.request(**known)
    except (InvalidRequest, TypeError) as e:
        problems += _field_errors(spec, known) or [_explained(spec, e)]
    else:
        if not problems:
            return request
    return ManifestError(line, "; ".join(problems))


#: Valid stand-ins for required fields, to go on checking the others when one is bad.
_STAND_INS: dict[str, Any] = {"prompt": "p", "image_urls": ["https://example.com/a.png"]}


def _field_errors(spec: ModelSpec, fields: dict[str, Any]) -> list[str]:
    """Every field's error: each bad field is set aside in turn (its default, or a valid
    stand-in if it has none) and the rest are checked again."""
    required = {f.name for f in spec.fields if f.default is attrs.NOTHING}
    missing = sorted(required - set(fields))
    errors = [f"{name}: missing" for name in missing]
    trial = {**{n: _STAND_INS[n] for n in missing if n in _STAND_INS}, **fields}
    set_aside: set[str] = set()
    while True:
        try:
            spec.request(**trial)
        except InvalidRequest as e:
            errors.append(_explained(spec, e))
            if e.field in set_aside or e.field not in trial:
                return errors
            set_aside.add(e.field)
            if e.field not in required:
                del trial[e.field]
            elif e.field in _STAND_INS:
                trial[e.field] = _STAND_INS[e.field]
            else:
                return errors
        except TypeError as e:
            return errors or [_explained(spec, e)]
        else:
            return errors


def _explained(spec: ModelSpec, e: Exception) -> str:
    """A field's error with the model's rule for it (``seedream-async models`` lists them)."""
    if not isinstance(e, InvalidRequest):
        return f"{spec.model}: {e}"
    rule = spec.limits.get(e.field)
    return f"{e} ({spec.model}: {e.field} {rule})" if rule else str(e)


def _csv_numbers(spec: ModelSpec, fields: dict[str, Any]) -> None:
    """A CSV cell is text: a whole-number field's digits become its number."""
    for field in spec.fields:
        value = fields.get(field.name)
        if isinstance(value, str) and str(field.type).startswith("int"):
            with contextlib.suppress(ValueError):
                fields[field.name] = int(value)


def check_manifest(path: Path, model: str = MODEL) -> int:
    """Validate every line before anything is paid for; report every bad line (up to a cap).

    Returns how many edits there are; streams, so a manifest of millions fits in memory.
    """
    count = 0
    errors: list[ManifestError] = []
    for item in _manifest_items(path, model):
        if isinstance(item, ManifestError):
            errors.append(item)
        else:
            count += 1
    if len(errors) == 1:
        raise UsageError(f"{path}:{errors[0]}")
    if errors:
        shown = "\n".join(f"  {path}:{e}" for e in errors[:MAX_REPORTED])
        hidden = len(errors) - MAX_REPORTED
        more = f"\n  ... and {hidden} more" if hidden > 0 else ""
        raise UsageError(
            f"{len(errors)} bad lines in the manifest, nothing was sent:\n{shown}{more}"
        )
    return count


IMAGE_SUFFIXES = frozenset((".jpg", ".jpeg", ".png", ".webp"))


def shaped_request(
    model: str, prompt: str, images: Sequence[str | Path], aspect_ratio: str, quality: str
) -> TaskRequest:
    """``model``'s request from the command line's flags (the shape, where the model has one)."""
    spec = model_for(model)
    if spec.takes_images != bool(images):
        need = "needs input images (--image)" if spec.takes_images else "takes no input images"
        raise UsageError(f"--model {model} {need}")
    names = {f.name for f in spec.fields}
    fields: dict[str, Any] = {"prompt": prompt}
    if images:  # no URL scheme: a local file (uploaded before createTask)
        fields["image_urls"] = [Path(i) if "://" not in str(i) else i for i in images]
    for name, value in (("aspect_ratio", aspect_ratio), ("quality", quality)):
        if name in names:
            fields[name] = value
    return spec.request(**fields)


def model_for(model: str) -> ModelSpec:
    """The spec of ``--model``; ``UsageError`` with the closest typed id otherwise."""
    spec = MODELS.get(model)
    if spec is None:
        close = difflib.get_close_matches(model, list(MODELS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"--model {model!r} is not a typed model; {hint}`seedream-async models`")
    return spec


def folder_requests(
    spec: str, prompt: str, aspect_ratio: str, quality: str, model: str = MODEL
) -> list[TaskRequest]:
    """One edit per image: every JPEG/PNG/WebP file in a folder, or every file a glob matches."""
    where = Path(spec)
    if where.is_dir():
        files = sorted(
            p
            for p in where.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
    else:
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
    if not files:
        raise UsageError(f"--images {spec}: no image files there")
    requests, errors = [], []
    for file in files:
        try:
            requests.append(shaped_request(model, prompt, [file], aspect_ratio, quality))
        except InvalidRequest as e:
            errors.append(e.message)
    if errors:
        shown = "\n".join(f"  {e}" for e in errors[:MAX_REPORTED])
        raise UsageError(f"{len(errors)} file(s) cannot be edited, nothing was sent:\n{shown}")
    return requests


def check_journal(path: Path, requests: Iterable[TaskRequest], *, simulate: bool) -> None:
    """Refuse, before anything is written, a journal that is busy, damaged or another batch's,
    or (with ``--simulate``) one whose tasks only an earlier run's simulator knew."""
    with Journal(path) as journal:
        for index, request in enumerate(requests):
            journal.get(index, request)
        counts = journal.counts()
    pending = counts.get(Stage.SENDING, 0) + counts.get(Stage.ACCEPTED, 0)
    if simulate and pending:
        raise UsageError(
            f"{path} has {pending} task(s) of an earlier run in flight, which only that run's"
            " simulator knew (each --simulate run starts a fresh one): use a new --journal"
        )


def check_output(out: Path, download_to: str | None) -> None:
    """Refuse output places that cannot work, before anything is paid for."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"--out {out} is not writable")
    if download_to is not None and Path(download_to).exists() and not Path(download_to).is_dir():
        raise UsageError(f"--download-to {download_to} exists and is not a directory")


def check_page(page: Path, flag: str) -> None:
    """Refuse a report page that cannot be written (before anything is paid for)."""
    parent = page.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if page.is_dir():
        raise UsageError(f"{flag} {page} is a directory")
    if not os.access(parent, os.W_OK) or (page.exists() and not os.access(page, os.W_OK)):
        raise UsageError(f"{flag} {page} is not writable")


# --- the client and the simulator -----------------------------------------------------------


@contextlib.asynccontextmanager
async def open_client(args: argparse.Namespace) -> AsyncIterator[SeedreamClient]:
    """A client for the command line's options, against a simulator with ``--simulate``."""
    create_rate = getattr(args, "create_rate", DEFAULT_CREATE_RATE)
    settings = Settings(
        max_in_flight=getattr(args, "max_in_flight", 100),
        task_deadline=getattr(args, "deadline", 900.0),
        create_rate=create_rate[0],
        create_period=create_rate[1],
    )
    receiver = None
    public_url = getattr(args, "public_url", None)
    listen = getattr(args, "listen", None)
    if public_url and not listen:
        raise UsageError(
            "--public-url needs --listen HOST:PORT (where the receiver serves the calls the"
            " public URL forwards); without a receiver every task would wait for a poll"
        )
    listen = listen or ("127.0.0.1:0" if args.simulate else None)
    if listen:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--listen needs HOST:PORT, got {listen!r}")
        receiver = CallbackReceiver(host, int(port), public_url=public_url)
    async with contextlib.AsyncExitStack() as stack:
        api_key, base_url = None, args.base_url
        if args.simulate:
            sim = Simulator(simulated_service())
            await sim.start()
            stack.push_async_callback(sim.aclose)
            api_key, base_url = "simulated", sim.url
            # The simulator serves its result images on loopback.
            settings = attrs.evolve(settings, allow_private_downloads=True)
            if create_rate == DEFAULT_CREATE_RATE:
                # The simulator enforces the account's 20 per 10 s, five times faster.
                settings = attrs.evolve(settings, create_rate=20, create_period=2.0)
        redis_url = resolve_redis_url(getattr(args, "redis", None))
        namespace = getattr(args, "namespace", "seedream")
        coordinator = (
            RedisCoordinator(redis_url, namespace=namespace) if redis_url is not None else None
        )
        client = SeedreamClient(
            api_key,
            base_url=base_url,
            callbacks=receiver,
            settings=settings,
            coordinator=coordinator,
        )
        await stack.enter_async_context(client)
        yield client


def simulated_service() -> SimulatorConfig:
    """The service ``--simulate`` runs: the simulator command line's defaults (realistic
    latency, the account limit five times faster, a balance), seeded."""
    return attrs.evolve(COMMAND_LINE_DEFAULTS, seed=7)


# --- commands -------------------------------------------------------------------------------


async def cmd_batch(args: argparse.Namespace) -> int:
    """Run a manifest (or a folder of images); write results JSONL; show progress and a summary."""
    from rich.console import Console  # noqa: PLC0415 (the [cli] extra, checked in main)

    # Everything checkable is checked before anything is paid for or any file is touched.
    source, total, inputs = _inputs(args)
    if not args.simulate:
        resolve_api_key(None)  # a missing key: exit 2 now, not after the journal exists
    out = Path(args.out or _default_out(source, images=args.images is not None))
    check_output(out, args.download_to)
    if args.report:
        check_page(Path(args.report), "--report")
    journal = args.journal
    if journal is None and not args.simulate:
        journal = str(out.with_suffix(".journal"))
    if args.retry_failed and journal is None:
        raise UsageError("--retry-failed needs --journal: the journal says which inputs failed")
    if journal is not None:
        check_journal(Path(journal), inputs(), simulate=args.simulate)
    args.journal_in_use = journal  # what a Ctrl-C's hint names
    console = Console(stderr=True)
    progress = BatchProgress(total=total)
    console.print(
        f"[bold]{total}[/] edits from {source}"
        + (f", journal {journal}" if journal else "")
        + (" [dim](simulated service)[/]" if args.simulate else "")
    )
    async with open_client(args) as client:
        await client.credits()  # fail fast, with one line, if the service is out of reach
        report = LiveReport(Path(args.report), total=total) if args.report else None
        with (
            _live_progress(progress, console, quiet=args.quiet),
            _Results(out) as results,
            _final_page(report),
        ):
            async for item in client.edit_many(
                inputs(),
                journal=journal,
                ordered=args.ordered,
                download_to=args.download_to,
                progress=progress,
                retry_failed=args.retry_failed,
            ):
                line = item_line(item)
                results.write(line)
                if report is not None:
                    report.add(line)
        written = await report.finish() if report is not None else None
    _summary(progress, out, args.download_to, Console())
    if written is not None:
        _print_report(written)
    return EXIT_OK if progress.succeeded == total else EXIT_FAILURES


@contextlib.contextmanager
def _final_page(report: LiveReport | None) -> Iterator[None]:
    """Start the live page; if the batch stops early (Ctrl-C), leave it as far as it got."""
    if report is None:
        yield
        return
    report.start()
    try:
        yield
    except BaseException:
        report.abandon()
        raise


def _default_out(source: str, *, images: bool) -> str:
    """``MANIFEST.results.jsonl``, or for ``--images`` the folder's (or the glob's) name."""
    if not images:
        return Path(source).with_suffix(".results.jsonl").name
    folder = Path(source)
    if not folder.is_dir():  # a glob: its directories up to the first wildcard
        parts = list(folder.parts[:-1])
        wild = next((n for n, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
        folder = Path(*parts[:wild]) if wild else Path()
    return f"{folder.resolve().name or 'images'}.results.jsonl"


def _inputs(args: argparse.Namespace) -> tuple[str, int, Callable[[], Iterator[TaskRequest]]]:
    """What to edit: a manifest (streamed) or ``--images`` with one ``--prompt``, checked."""
    if (args.manifest is None) == (args.images is None):
        raise UsageError("give a MANIFEST or --images DIR_OR_GLOB (with --prompt), not both")
    if args.images is not None:
        if not args.prompt:
            raise UsageError("--images needs --prompt, the edit to make to every image")
        edits = folder_requests(
            args.images, args.prompt, args.aspect_ratio, args.quality, args.model
        )
        return args.images, len(edits), lambda: iter(edits)
    if args.prompt:
        raise UsageError("--prompt goes with --images; a manifest has a prompt per line")
    manifest = Path(args.manifest)
    model_for(args.model)
    return (
        args.manifest,
        check_manifest(manifest, args.model),
        lambda: read_manifest(manifest, args.model),
    )


class _Results:
    """The results JSONL, opened at the first line: a run refused before it leaves it alone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def __enter__(self) -> _Results:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        elif exc[0] is None:  # a batch with nothing to report still leaves its (empty) file
            self._open().close()

    def _open(self) -> IO[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.open("w", encoding="utf-8")

    def write(self, line: dict[str, Any]) -> None:
        """Write and flush one line (small: a blocking write costs microseconds)."""
        if self._file is None:
            self._file = self._open()
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()


def item_line(item: BatchItem) -> dict[str, Any]:
    """One line of the results JSONL."""
    line: dict[str, Any] = {"index": item.index, "status": item.status}
    if item.request is not None:
        line["model"] = item.request.model
        given: Any = item.request  # a JobRequest has neither field
        if (prompt := getattr(given, "prompt", None)) is not None:
            line["prompt"] = prompt
        line["inputs"] = [
            str(u.path) if isinstance(u, LocalImage) else str(u)
            for u in getattr(given, "image_urls", ())
        ]
        for name in ("aspect_ratio", "quality"):  # (of the models that have them)
            if (value := getattr(given, name, None)) is not None:
                line[name] = str(value)
    if item.result is not None:
        line["task_id"] = item.result.task_id
        line["urls"] = [str(u) for u in item.result.urls]
        line["credits"] = item.result.record.credits_consumed
        line |= _record_times(item.result.record, line.get("model"))
    elif isinstance(item.error, TaskFailed | TaskTimeout):
        line["task_id"] = item.error.task_id
    if isinstance(item.error, TaskFailed):
        line["fail_code"], line["fail_msg"] = item.error.fail_code, item.error.fail_msg
    if item.files:
        line["files"] = [str(f) for f in item.files]
    if item.error is not None:
        line["error"] = f"{type(item.error).__name__}: {item.error}"
    if item.from_journal:
        line["from_journal"] = True
    if item.resumed:
        line["resumed"] = True
    line["at"] = round(time.time(), 3)  # when it ended here: the report's time line
    return line


def _record_times(record: TaskRecord, asked: str | None) -> dict[str, Any]:
    times = {"model": record.model or asked or MODEL}
    for name, when in (("created", record.create_time), ("completed", record.complete_time)):
        if when is not None:
            times[name] = when.isoformat()
    return times


@contextlib.contextmanager
def _live_progress(progress: BatchProgress, console: Any, *, quiet: bool) -> Iterator[None]:
    note = _UnansweredNote(progress, console)
    if quiet:
        refresher = _Refresher(note)
        try:
            yield
        finally:
            refresher.stop()
            note()
        return
    from rich.progress import (  # noqa: PLC0415 (the [cli] extra, checked in main)
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]editing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f}/s"),
        # "uploads N" only once a local image was uploaded (never, for image URLs only),
        # "awaiting callbacks N" only while an earlier run's submissions may exist.
        TextColumn(
            "in flight {task.fields[running]}{task.fields[may_exist]}{task.fields[uploads]}"
        ),
        TextColumn("[red]failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        refresh_per_second=5,
    )
    task = bar.add_task(
        "batch", total=progress.total, rate=0.0, running=0, may_exist="", failed=0, uploads=""
    )

    def update() -> None:
        note()
        failed = progress.failed + progress.unknown + progress.errors
        waiting = progress.awaiting_callbacks
        bar.update(
            task,
            completed=progress.done,
            rate=progress.rate,
            running=progress.running,
            may_exist=f" [yellow]awaiting callbacks {waiting}[/]" if waiting else "",
            failed=failed,
            uploads=f" uploads {progress.uploaded}" if progress.uploaded else "",
        )

    with bar:
        refresher = _Refresher(update)
        try:
            yield
        finally:
            refresher.stop()
            update()


class _UnansweredNote:
    """Says once, as soon as the batch counted them, how many inputs an earlier run may
    have submitted and how long their callbacks are waited for."""

    def __init__(self, progress: BatchProgress, console: Any) -> None:
        self._progress = progress
        self._console = console
        self._said = False

    def __call__(self) -> None:
        n = self._progress.may_exist
        if self._said or not n:
            return
        self._said = True
        wait = self._progress.may_exist_wait
        if wait:
            message = f"{n} submissions may exist: waiting up to {wait:g} s for their callbacks"
        else:
            message = (
                f"{n} submissions may exist: their callbacks cannot reach this run (it"
                " listens elsewhere, or not at all), so they are reported unknown"
            )
        self._console.print(f"[yellow]{message}")


class _Refresher:
    """Calls ``update`` five times a second on the running loop, with one timer."""

    def __init__(self, update: Any) -> None:
        self._update = update
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(0.2, self._tick)

    def _tick(self) -> None:
        self._update()
        self._handle = self._loop.call_later(0.2, self._tick)

    def stop(self) -> None:
        self._handle.cancel()


def _summary(progress: BatchProgress, out: Path, images: str | None, console: Any) -> None:
    from rich.table import Table  # noqa: PLC0415 (the [cli] extra, checked in main)

    table = Table(title="seedream batch", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("succeeded", f"[green]{progress.succeeded}")
    table.add_row("failed", f"[red]{progress.failed}" if progress.failed else "0")
    table.add_row("unknown", f"[yellow]{progress.unknown}" if progress.unknown else "0")
    if progress.errors:
        table.add_row("errors", f"[red]{progress.errors}")
    table.add_row("from journal", str(progress.from_journal))
    if progress.resumed:  # sent by an interrupted run, tracked to their end by this one
        table.add_row("resumed", str(progress.resumed))
    table.add_row("credits, this run", f"{progress.credits:g}")
    if progress.from_journal or progress.resumed:
        table.add_row("credits, earlier runs", f"{progress.credits_earlier:g}")
    table.add_row("wall time", f"{progress.elapsed:.1f} s")
    console.print(table)
    console.print(f"results: {out}")
    if images:
        console.print(f"images:  {images}")


async def cmd_edit(args: argparse.Namespace) -> int:
    """One edit; print its result as JSON."""
    try:
        request = shaped_request(
            args.model, args.prompt, args.image or [], args.aspect_ratio, args.quality
        )
    except InvalidRequest as e:
        raise UsageError(str(e)) from e
    async with open_client(args) as client:
        result = await client.edit(request)
        files = await client.download(result, args.download_to) if args.download_to else []
    print(json.dumps(_result_json(result, files), indent=2))
    return EXIT_OK


def _result_json(result: EditResult, files: Sequence[Path]) -> dict[str, Any]:
    line: dict[str, Any] = {"task_id": result.task_id, "urls": [str(u) for u in result.urls]}
    if files:
        line["files"] = [str(f) for f in files]
    return line


async def cmd_models(args: argparse.Namespace) -> int:
    """List the typed models with their fields, limits and defaults."""
    listed: list[dict[str, Any]] = [
        {
            "model": spec.model,
            "kind": spec.kind,
            "request": spec.request.__name__,
            "takes_images": spec.takes_images,
            "price_key": spec.price_key,
            "fields": spec.rules(),
        }
        for spec in typed_models()
    ]
    if args.json:
        print(json.dumps(listed, indent=2))
        return EXIT_OK
    for model in listed:
        print(f"{model['model']}  ({model['kind']}, {model['request']})")
        for rule in model["fields"]:
            print("  " + _rule_text(rule))
    print("Any other model id: JobRequest(model=..., input={...}) in Python.")
    return EXIT_OK


def _rule_text(rule: dict[str, Any]) -> str:
    parts = [f"{rule['name']:<17}", "required" if rule["required"] else "optional"]
    if rule["default"] is not None:
        parts.append(f"default {rule['default']}")
    if rule["choices"]:
        parts.append("one of " + " ".join(rule["choices"]))
    if rule["limits"]:
        parts.append(rule["limits"])
    return "  ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if parts[2:] else "")


async def cmd_task(args: argparse.Namespace) -> int:
    """Print a task's record as JSON: the results' tidy shape, or ``--raw`` as sent."""
    async with open_client(args) as client:
        record = await client.get_task(args.task_id)
    print(json.dumps(record_to_wire(record) if args.raw else record_line(record), indent=2))
    return EXIT_OK


def record_line(record: TaskRecord) -> dict[str, Any]:
    """A task's record in the shape of a results line: what a person looks for first."""
    line: dict[str, Any] = {"task_id": record.task_id, "state": record.state.value}
    if record.result_urls:
        line["urls"] = [str(u) for u in record.result_urls]
    if record.credits_consumed is not None:
        line["credits"] = record.credits_consumed
    if record.fail_code or record.fail_msg:
        line["error"] = f"{record.fail_code}: {record.fail_msg}"
    for name, when in (("created", record.create_time), ("completed", record.complete_time)):
        if when is not None:
            line[name] = when.isoformat()
    return line


async def cmd_report(args: argparse.Namespace) -> int:
    """Write the contact sheet of a results file: HTML pages with thumbnails beside them."""
    written = await asyncio.to_thread(_write_report, Path(args.results), args.out)
    _print_report(written)
    return EXIT_OK


def _write_report(results: Path, out_arg: str | None) -> Written:
    try:
        lines, bad = read_results(results)
    except OSError as e:
        raise UsageError(f"cannot read results {results}: {e.strerror or e}") from e
    out = Path(out_arg or results.with_suffix(".html").name)
    check_page(out, "--out")
    return write_report(lines, out, bad_lines=bad, bases=[results.parent], title=results.name)


def _print_report(written: Written) -> None:
    pages = len(written.pages)
    print(f"report: {written.pages[0]}" + (f" ({pages} pages)" if pages > 1 else ""))
    if not written.pillow:
        print(f"no thumbnails: they need Pillow ({REPORT_INSTALL})", file=sys.stderr)


async def cmd_download(args: argparse.Namespace) -> int:
    """Fetch the result images of an earlier run that are not on disk; report each input."""
    results, lines = _read_for_download(Path(args.results), args.to)
    settings = Settings()
    async with aiohttp.ClientSession(headers={"User-Agent": settings.user_agent}) as session:
        downloader = Downloader.for_settings(session, settings)
        try:
            fetched = await fetch_missing(
                lines, Path(args.to), downloader, base=results.parent, now=time.time()
            )
        finally:
            await downloader.aclose()
    await asyncio.to_thread(
        rewrite_results, results, [updated_line(x, f) for x, f in zip(lines, fetched, strict=True)]
    )
    return _print_fetched(fetched, args.to)


def _read_for_download(results: Path, to: str) -> tuple[Path, list[dict[str, Any]]]:
    if Path(to).exists() and not Path(to).is_dir():
        raise UsageError(f"--to {to} exists and is not a directory")
    try:
        lines, bad = read_results(results)
    except OSError as e:
        raise UsageError(f"cannot read results {results}: {e.strerror or e}") from e
    if bad:  # rewriting the file with its files would drop them
        raise UsageError(f"{results}: {bad} line(s) are not JSON objects; fix them first")
    return results, lines


def _print_fetched(fetched: Sequence[Fetched], to: str) -> int:
    counts = dict.fromkeys(
        (Outcome.DOWNLOADED, Outcome.PRESENT, Outcome.EXPIRED, Outcome.FAILED, Outcome.NO_RESULT), 0
    )
    for item in fetched:
        counts[item.outcome] += 1
        if item.outcome in (Outcome.EXPIRED, Outcome.FAILED):
            age = f", {item.age / 3600:.0f} h old" if item.age is not None else ""
            print(f"input {item.index}: {item.outcome}{age}: {item.reason}", file=sys.stderr)
    print(", ".join(f"{name} {n}" for name, n in counts.items()) + f" (into {to})")
    return EXIT_FAILURES if counts[Outcome.EXPIRED] or counts[Outcome.FAILED] else EXIT_OK


async def cmd_credits(args: argparse.Namespace) -> int:
    """Print the account's credit balance."""
    async with open_client(args) as client:
        print(f"{await client.credits():g}")
    return EXIT_OK


# --- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line, with a ``--help`` that teaches; each command takes only its flags."""
    service = _Parser(add_help=False)
    group = service.add_argument_group("service")
    group.add_argument(
        "--simulate",
        action="store_true",
        help="run against an in-process simulator (no key, no network)",
    )
    group.add_argument("--base-url", help="the service (default: $APIKLEY_BASE_URL or Apikley)")
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log each task's steps at INFO (submitted, accepted, resolved, downloaded)",
    )

    submitting = _Parser(add_help=False)
    group = submitting.add_argument_group("submitting")
    group.add_argument(
        "--listen", metavar="HOST:PORT", help="serve callbacks here (else tasks are polled)"
    )
    group.add_argument(
        "--public-url", metavar="URL", help="with --listen: the URL the service calls back"
    )
    group.add_argument(
        "--max-in-flight", type=_positive_int, default=100, help="tasks at once (default 100)"
    )
    group.add_argument(
        "--deadline",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="give up on a task after this long (default 900)",
    )
    group.add_argument(
        "--create-rate",
        type=window,
        default=DEFAULT_CREATE_RATE,
        metavar="N/SECONDS",
        help="createTask limit of your account (default 20/10)",
    )
    group.add_argument(
        "--redis",
        metavar="URL",
        help=f"share the account with other processes through this Redis (${REDIS_URL_ENV})",
    )
    group.add_argument(
        "--namespace",
        default="seedream",
        help="with --redis: the account's namespace in Redis (default seedream)",
    )

    parser = _Parser(
        prog="seedream-async",
        description="Edit images with Seedream 4.5 Edit on the Apikley jobs API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"seedream-async {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        dest="verbose_first",
        action="store_true",
        help="log each task's steps at INFO (also accepted after the command)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    batch = sub.add_parser(
        "batch", parents=[service, submitting], help="edit every request of a manifest"
    )
    batch.add_argument(
        "manifest",
        nargs="?",
        help="JSONL (or .csv) file, one edit per line; image entries may be paths (relative to it)",
    )
    batch.add_argument(
        "--images",
        metavar="DIR_OR_GLOB",
        help="instead of a manifest: edit every JPEG/PNG/WebP in a folder (or a glob); results"
        " go to DIR.results.jsonl here (the folder's, or the glob's folder's, name) unless --out",
    )
    batch.add_argument("--prompt", help="with --images: the edit to make to every image")
    _model_argument(batch, 'the model of manifest lines without a "model" (and of --images)')
    _shape_arguments(batch, "with --images: ")
    batch.add_argument(
        "--out", help="results JSONL (default: MANIFEST.results.jsonl, or DIR.results.jsonl)"
    )
    batch.add_argument("--journal", help="SQLite journal that makes reruns resume")
    batch.add_argument(
        "--retry-failed",
        action="store_true",
        help="with a journal: submit again the inputs whose tasks failed (never unknown ones)",
    )
    batch.add_argument("--download-to", metavar="DIR", help="save result images here")
    batch.add_argument(
        "--report", metavar="HTML", help="keep an HTML contact sheet here (rewritten every 5 s)"
    )
    batch.add_argument("--ordered", action="store_true", help="write results in input order")
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(run=cmd_batch)

    _add_edit_command(sub, [service, submitting])

    task = sub.add_parser("task", parents=[service], help="a task's status as JSON")
    task.add_argument("task_id", help="the id createTask answered (task_...)")
    task.add_argument("--raw", action="store_true", help="the record as the service sent it")
    task.set_defaults(run=cmd_task)

    credit = sub.add_parser(
        "credits", parents=[service], help="the account's credit balance (a plain number)"
    )
    credit.set_defaults(run=cmd_credits)
    _add_report_commands(sub)
    _add_models_command(sub)

    simulate = sub.add_parser(
        "simulate",
        help="serve the simulator (same as python -m seedream_async.simulator)",
        description="Serve the simulated jobs API until Ctrl-C; prints its counters on exit.",
    )
    add_simulator_arguments(simulate)
    simulate.set_defaults(run=None, simulate=False, verbose=False)
    return parser


def _add_edit_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    edit = sub.add_parser("edit", parents=parents, help="one edit, result as JSON")
    edit.add_argument("--prompt", required=True, help="the edit to make")
    edit.add_argument(
        "--image",
        action="append",
        help="an input image URL or file (repeatable; up to 14 for the default model)",
    )
    _model_argument(edit, "the model (a text-to-image one takes no --image)")
    _shape_arguments(edit, "")
    edit.add_argument("--download-to", metavar="DIR", help="save the result images here")
    edit.set_defaults(run=cmd_edit)


def _add_models_command(sub: Any) -> None:
    models = sub.add_parser("models", help="the typed models: their fields, limits and defaults")
    models.add_argument("--json", action="store_true", help="as JSON")
    models.set_defaults(run=cmd_models, simulate=False, verbose=False)


def _add_report_commands(sub: Any) -> None:
    """``report`` (a results file as a contact sheet) and ``download`` (its images, late)."""
    report = sub.add_parser(
        "report", help="an HTML contact sheet of a results file: inputs beside outputs"
    )
    report.add_argument("results", help="the results JSONL of a batch")
    report.add_argument("--out", help="the page (default: RESULTS.html; 500 cards a page)")
    report.set_defaults(run=cmd_report, simulate=False, verbose=False)
    download = sub.add_parser(
        "download", help="fetch the result images of an earlier run that are not on disk"
    )
    download.add_argument("results", help="the results JSONL of a batch (its files are updated)")
    download.add_argument("--to", required=True, metavar="DIR", help="save the images here")
    download.set_defaults(run=cmd_download, simulate=False, verbose=False)


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line that says where to read more (the usage block printed
    first buried the useful line); each command's parser is one of these too."""

    def error(self, message: str) -> NoReturn:
        """Exit 2 with ``PROG: error: MESSAGE (see PROG --help)``."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _shape_arguments(parser: argparse.ArgumentParser, scope: str) -> None:
    """``--aspect-ratio`` and ``--quality`` of the result (``scope`` says when they apply)."""
    parser.add_argument(
        "--aspect-ratio",
        default="1:1",
        choices=[a.value for a in AspectRatio],
        help=f"{scope}the result's aspect ratio (default 1:1)",
    )
    parser.add_argument(
        "--quality",
        default="basic",
        choices=[q.value for q in Quality],
        help=f"{scope}basic (2K) or high (4K) (default basic)",
    )


def _model_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--model",
        default=MODEL,
        metavar="MODEL",
        help=f"{what} (default {MODEL}; `seedream-async models` lists them)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script."""
    args = build_parser().parse_args(argv)
    args.verbose = args.verbose or args.verbose_first
    if args.verbose:
        _log_to_stderr()
    sys.exit(run(args))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now: above the live progress bar, not through it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


def _log_to_stderr() -> None:
    """``-v``: the SDK's INFO lines (never a key or a token) on stderr, and the traceback
    of an unexpected error; once per process."""
    logger = logging.getLogger("seedream_async")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; map every error to one line and an exit code."""
    warm_allocator()  # the CLI owns its process: asyncio's reads stay off mmap (glibc)
    if args.command == "simulate":
        # The simulator prints plain lines: it runs wherever the library is installed.
        return run_command_line(args)  # Ctrl-C is how it stops: exit 0, counters printed
    try:
        import rich  # noqa: F401, PLC0415 (only to give a clear error without the extra)
    except ImportError:
        return _fail("the CLI needs its extra: pip install 'seedream-async[cli]'", EXIT_USAGE)
    started = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            code: int = runner.run(args.run(args))
    except KeyboardInterrupt:
        hint = _resume_hint(args) if args.command == "batch" else ""
        return _fail(f"interrupted after {time.monotonic() - started:.0f} s{hint}", 130)
    except Exception as e:
        return _fail(*_explain(e, args))
    return code


def _resume_hint(args: argparse.Namespace) -> str:
    """What a rerun after Ctrl-C does: resume from the journal the run used (named, even the
    default one), or, with ``--simulate``, start afresh if tasks died with its simulator."""
    journal = getattr(args, "journal_in_use", None)
    if journal is None:
        return " (nothing was journaled: add --journal FILE to make a rerun resume)"
    if args.simulate and (pending := _in_flight(Path(journal))):
        return (
            f" ({pending} task(s) in flight died with the simulator, so {journal} cannot"
            " resume: start again with a new --journal)"
        )
    return f" (run the same command again to resume from the journal {journal})"


def _in_flight(journal: Path) -> int:
    """Tasks the journal says were sent and never ended (0 if it cannot be read)."""
    if not journal.exists():
        return 0
    try:
        with Journal(journal) as opened:
            counts = opened.counts()
    except JournalError:
        return 0
    return counts.get(Stage.SENDING, 0) + counts.get(Stage.ACCEPTED, 0)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when the ``speed`` extra is installed (the CLI owns its process; the library
    never sets an event loop policy), else asyncio's own loop."""
    try:
        import uvloop  # noqa: PLC0415 (optional)
    except ImportError:
        return None
    return uvloop.new_event_loop


def _explain(e: Exception, args: argparse.Namespace) -> tuple[str, int]:
    """One line and an exit code for an error: never a traceback."""
    if isinstance(e, InvalidRequest) and e.field == "api_key" and not args.simulate:
        return f"{e}; try --simulate to run against a simulator, no key needed", EXIT_USAGE
    if isinstance(e, UsageError | InvalidRequest | JournalError | ReceiverError):
        return str(e), EXIT_USAGE
    if isinstance(e, ExtraNotInstalled):
        return str(e), EXIT_USAGE
    if isinstance(e, CoordinatorUnavailable):
        return f"{e} (is Redis up?)", EXIT_SERVICE
    if isinstance(e, ApiError):
        return _service_message(e, args), EXIT_SERVICE
    if isinstance(e, SeedreamError):
        return f"{type(e).__name__}: {e}", EXIT_FAILURES
    if isinstance(e, OSError):  # a disk or a path gave out mid-run: the user's to fix
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or e}{where}", EXIT_USAGE
    # A bug of ours: one line here, the traceback with -v (without -v no handler is set,
    # and logging's last resort would print it).
    if args.verbose:
        logging.getLogger("seedream_async").error("unexpected error", exc_info=e)
    hint = "" if args.verbose else "; rerun with -v for the traceback"
    return f"unexpected {type(e).__name__}: {e} (please report it{hint})", EXIT_BUG


def _service_message(e: ApiError, args: argparse.Namespace) -> str:
    where = "the simulator" if args.simulate else (args.base_url or "the service")
    if isinstance(e, ServiceUnreachable):
        return f"cannot reach {e.url}: {e.reason}"
    if e.code is None and e.http_status is None:
        return f"cannot reach {where}: {e.message}"
    return f"{type(e).__name__} from {where}: {e.message or e}"


def _fail(message: str, code: int) -> int:
    print(f"seedream-async: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    main()
