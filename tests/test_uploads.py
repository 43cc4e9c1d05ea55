"""Issue 11: local images are uploaded through the service's upload API, once per content."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from yarl import URL

from seedream_async import EditRequest, InvalidRequest, LocalImage, UploadChanged, UploadError
from seedream_async.simulator import Simulator
from tests.conftest import ClientFactory
from tests.test_cli import run

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff\xe0"
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 "


def image(path: Path, size: int = 4096, head: bytes = PNG, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = bytes((seed + i) % 251 for i in range(size - len(head)))
    path.write_bytes(head + body)
    return path


def edit(n: int, *images: Path | str) -> EditRequest:
    return EditRequest(prompt=f"edit {n}", image_urls=list(images))


async def test_upload_returns_a_url_serving_the_same_bytes(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    client = make_client()
    file = image(tmp_path / "a.png")
    url = await client.upload(file)
    assert url.scheme == "http"
    assert sim.uploaded[url.path.removeprefix("/uploads/")][0] == file.read_bytes()
    assert await client.upload(str(file)) == url  # the same content: no second upload
    assert await client.upload(file.read_bytes()) == url
    assert sim.stats.uploads == 1
    for kind, head in (("jpeg", JPEG), ("webp", WEBP)):
        other = image(tmp_path / f"b.{kind}", head=head)
        assert LocalImage.open(other).kind == kind
        await client.upload(other)
    assert sim.stats.uploads == 3


async def test_many_edits_of_one_file_share_one_upload(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Ten edits at the same moment, one file: uploaded once, and createTask sees only URLs."""
    client = make_client(callbacks=True)
    file = image(tmp_path / "same.png")
    other = image(tmp_path / "other.png", seed=7)
    results = await asyncio.gather(*(client.edit(edit(n, file, other)) for n in range(10)))
    assert sim.stats.uploads == 2
    assert len(results) == 10
    for task in sim.tasks.values():
        assert all(isinstance(u, URL) and u.scheme == "http" for u in task.request.image_urls)
    assert results[0].request is not None
    assert results[0].request.local_images[0].path == file.absolute()


async def test_an_expired_upload_is_uploaded_again(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    sim.config.upload_ttl = 0.3
    client = make_client(upload_reuse_for=0.2)
    file = image(tmp_path / "a.png")
    await client.edit(edit(0, file))
    await asyncio.sleep(0.4)  # the service has dropped it: reusing the URL would fail the task
    await client.edit(edit(1, file))
    assert sim.stats.uploads == 2


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        (lambda d: d / "missing.png", "No such file"),
        (lambda d: d, "not a regular file"),
        (lambda d: image(d / "big.png", size=10 * 1024 * 1024 + 1), "10 MB"),
        (lambda d: (d / "notes.png").write_text("just text") and d / "notes.png", "not a JPEG"),
        (lambda d: image(d / "gif.png", head=b"GIF89a"), "not a JPEG"),
    ],
    ids=["missing", "directory", "oversized", "text", "gif"],
)
async def test_bad_files_are_refused_before_anything_is_sent(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path, make: object, rule: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(InvalidRequest, match=rule) as refused:
        await make_client().edit(prompt="p", image_urls=[path])
    assert str(path) in str(refused.value)
    with pytest.raises(InvalidRequest, match=rule):
        await make_client().upload(path)
    assert sim.stats.uploads == 0
    assert sim.stats.create_requests == 0


async def test_a_resumed_batch_does_not_upload_again_and_a_moved_folder_still_matches(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "j.sqlite"
    first_dir = tmp_path / "photos"
    files = [image(first_dir / f"{n}.png", seed=n) for n in range(3)]
    first = [
        i
        async for i in make_client().edit_many(
            [edit(n, f) for n, f in enumerate(files)], journal=journal
        )
    ]
    assert all(i.ok for i in first)
    assert sim.stats.uploads == 3
    moved = tmp_path / "moved"
    shutil.move(first_dir, moved)
    again = [edit(n, moved / f"{n}.png") for n in range(3)] + [edit(3, moved / "0.png")]
    items = [i async for i in make_client().edit_many(again, journal=journal)]
    assert [i.from_journal for i in sorted(items, key=lambda i: i.index)] == [True] * 3 + [False]
    assert all(i.ok for i in items)
    assert sim.stats.uploads == 3  # input 3's image was uploaded by the first run: reused
    assert sim.stats.tasks_created == 4


async def test_a_failed_upload_fails_its_item_and_the_batch_goes_on(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    sim.config.upload_max_bytes = 5000
    small = image(tmp_path / "small.png", size=1000)
    large = image(tmp_path / "large.png", size=9000)
    items = [
        i async for i in make_client().edit_many([edit(0, small), edit(1, large), edit(2, small)])
    ]
    by_index = {i.index: i for i in items}
    assert by_index[0].ok
    assert by_index[2].ok
    assert isinstance(by_index[1].error, UploadError)
    assert "too large" in by_index[1].error.reason
    assert by_index[1].error.path == large.absolute()
    assert sim.stats.tasks_created == 2


async def test_bytes_that_are_no_image_are_refused(make_client: ClientFactory) -> None:
    with pytest.raises(InvalidRequest, match="not a JPEG"):
        await make_client().upload(b"hello")


def test_the_cli_edits_a_folder_of_images(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for n in range(3):
        image(folder / f"{n}.png", seed=n)
    (folder / "notes.txt").write_text("not an image, not picked up")
    (folder / ".hidden.png").write_bytes(b"ignored")
    out, images = tmp_path / "r.jsonl", tmp_path / "out"
    code = run("batch", "--images", str(folder), "--prompt", "make it winter", "--simulate",
               "--out", str(out), "--download-to", str(images), "-q")  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["inputs"][0] for line in lines) == [
        str(folder / f"{n}.png") for n in range(3)
    ]
    assert all(line["status"] == "succeeded" for line in lines)
    assert len(list(images.glob("*.png"))) == 3


def test_the_cli_reads_paths_relative_to_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image(tmp_path / "set" / "img" / "a.png")
    manifest = tmp_path / "set" / "m.jsonl"
    manifest.write_text(
        json.dumps({"prompt": "p", "image_urls": ["img/a.png", "https://x.example/b.png"]}) + "\n"
    )
    out = tmp_path / "r.jsonl"
    monkeypatch.chdir(tmp_path)  # not the manifest's folder: paths are relative to it
    assert run("batch", str(manifest), "--simulate", "--out", str(out), "-q") == 0
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["inputs"] == [str(tmp_path / "set" / "img" / "a.png"), "https://x.example/b.png"]
    assert line["prompt"] == "p"  # the input itself, next to its outcome


def test_the_cli_refuses_a_missing_file_in_a_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"prompt": "p", "image_urls": ["nope.png"]}) + "\n")
    assert run("batch", str(manifest), "--simulate", "-q", "--out", str(tmp_path / "r")) == 2
    assert ":1: image_urls:" in capsys.readouterr().err


def _fail_first_upload(change: Callable[[], object]) -> Callable[[int], bool]:
    """A simulator fault: the first upload attempt fails, and ``change`` runs before its retry."""

    def fault(attempt: int) -> bool:
        if attempt == 1:
            change()
        return attempt == 1

    return fault


def _open_on(path: Path) -> list[str]:
    """This process's descriptors open on ``path`` (Linux's /proc; empty elsewhere)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return []
    found = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                found.append(fd.name)
    return found


async def test_a_symlink_swapped_in_between_attempts_uploads_the_checked_bytes(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The retry re-reads what the first attempt opened: never the file the link points to."""
    file = image(tmp_path / "a.png")
    checked = file.read_bytes()
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n" * 50)

    def swap() -> None:
        file.unlink()
        file.symlink_to(secret)

    sim.config.upload_fault = _fail_first_upload(swap)
    url = await make_client().upload(file)
    assert sim.stats.upload_requests == 2
    assert sim.uploaded[url.path.removeprefix("/uploads/")][0] == checked
    assert all(secret.read_bytes() not in data for data, _ in sim.uploaded.values())
    assert url.name.startswith(hashlib.sha256(checked).hexdigest()[:32])
    assert _open_on(tmp_path / "a.png") == []


async def test_a_file_grown_sparse_to_200_mb_between_attempts_is_refused_unsent(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    file = image(tmp_path / "a.png")
    sim.config.upload_fault = _fail_first_upload(lambda: os.truncate(file, 200 * 1024 * 1024))
    with pytest.raises(UploadChanged, match="size") as refused:
        await make_client().upload(file)
    assert refused.value.path == file.absolute()
    assert sim.stats.upload_requests == 1  # the retry sent nothing at all
    assert sim.stats.upload_bytes_received == 4096
    assert sim.stats.uploads == 0
    assert _open_on(file) == []


async def test_a_file_rewritten_in_place_between_attempts_is_refused(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Same size, same kind, other content: the retry would have stored it under the old hash."""
    file = image(tmp_path / "a.png")

    def rewrite() -> None:
        with file.open("r+b") as f:
            f.seek(1000)
            f.write(b"\x00" * 100)

    sim.config.upload_fault = _fail_first_upload(rewrite)
    with pytest.raises(UploadChanged, match="content"):
        await make_client().upload(file)
    assert sim.stats.upload_requests == 1
    assert sim.stats.uploads == 0
    assert _open_on(file) == []


async def test_a_symlink_swapped_in_after_the_check_is_refused(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Checked as a file, a link by the time it is uploaded: nothing is sent."""
    file = image(tmp_path / "a.png")
    request = edit(0, file)
    other = image(tmp_path / "other.png", seed=3)
    file.unlink()
    file.symlink_to(other)
    with pytest.raises(UploadError, match="symbolic link"):
        await make_client().edit(request)
    assert sim.stats.upload_requests == 0
    assert sim.stats.create_requests == 0


async def test_a_path_given_as_a_symlink_is_followed_once_when_checked(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    real = image(tmp_path / "photos" / "a.png")
    link = tmp_path / "link.png"
    link.symlink_to(real)
    result = await make_client().edit(edit(0, link))
    assert result.request is not None
    assert result.request.local_images[0].path == link.absolute()  # the path as given
    assert sim.stats.uploads == 1
    ((data, _),) = sim.uploaded.values()
    assert data == real.read_bytes()


async def test_a_file_rewritten_while_it_is_sent_is_cut_off_unstored(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The last chunk goes out only once the bytes sent hash to the checked content."""
    file = image(tmp_path / "a.png", size=8 * 1024 * 1024)
    rewritten: list[int] = []

    def rewrite_the_end(_: int) -> None:
        if not rewritten:  # the first bytes are in: the end of the file is not sent yet
            with file.open("r+b") as f:
                f.seek(-16, os.SEEK_END)
                rewritten.append(f.write(b"\x00" * 16))

    sim.config.upload_chunk_hook = rewrite_the_end
    with pytest.raises(UploadChanged, match="while it was sent"):
        await make_client().upload(file)
    assert rewritten == [16]
    assert sim.stats.uploads == 0
    assert sim.stats.upload_bytes_received < 8 * 1024 * 1024
    assert _open_on(file) == []
    assert [r for r in caplog.records if r.exc_info] == []
