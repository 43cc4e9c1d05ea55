"""``batch --images`` as a newcomer meets it: where results go, what downloads are called."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seedream_async import EditRequest, LocalImage
from tests.conftest import ClientFactory
from tests.test_cli import run
from tests.test_uploads import image


def test_a_glob_names_the_results_after_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(2):
        image(tmp_path / "photos" / f"img{n}.png", seed=n)
    monkeypatch.chdir(tmp_path)
    assert run("batch", "--images", "photos/*.png", "--prompt", "winter", "--simulate", "-q") == 0
    assert not list(tmp_path.glob("[*]*"))  # no file literally named *.results.jsonl
    lines = (tmp_path / "photos.results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert run("batch", "--images", "photos", "--prompt", "winter", "--simulate", "-q") == 0
    assert len((tmp_path / "photos.results.jsonl").read_text().splitlines()) == 2


def test_help_for_images_says_where_results_go(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("batch", "--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "DIR.results.jsonl" in text


def test_downloads_of_local_files_keep_the_inputs_names(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for n in range(2):
        image(folder / f"img{n}.png", seed=n)
    out, images = tmp_path / "r.jsonl", tmp_path / "out"
    code = run("batch", "--images", str(folder), "--prompt", "winter", "--simulate",
               "--out", str(out), "--download-to", str(images), "-q")  # fmt: skip
    assert code == 0
    lines = sorted(
        (json.loads(line) for line in out.read_text().splitlines()), key=lambda x: x["index"]
    )
    assert [Path(line["files"][0]).name for line in lines] == ["img0_0.png", "img1_0.png"]
    assert [line["inputs"] for line in lines] == [[str(folder / f"img{n}.png")] for n in range(2)]
    assert sorted(p.name for p in images.glob("*.png")) == ["img0_0.png", "img1_0.png"]


async def test_same_stems_in_two_folders_never_overwrite(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """``a/img.png`` and ``b/img.png`` (and ``IMG.png``, one name on a case-blind disk), and
    a URL input: one file each, named the same way whichever finishes first."""
    paths = [tmp_path / "a" / "img.png", tmp_path / "b" / "img.png", tmp_path / "c" / "IMG.png"]
    for n, path in enumerate(paths):
        image(path, seed=n)
    requests = [EditRequest(prompt=f"p{n}", image_urls=[p]) for n, p in enumerate(paths)]
    requests.append(EditRequest(prompt="p3", image_urls=["https://img.example/x.png"]))
    names = []
    for _ in range(2):
        target = tmp_path / f"out{len(names)}"
        items = [i async for i in make_client().edit_many(requests, download_to=target)]
        by_index = {i.index: [f.name for f in i.files] for i in items}
        assert all(i.ok for i in items)
        assert len(list(target.glob("*.png"))) == 4  # nothing overwritten
        names.append(by_index)
    assert names[0] == names[1]  # deterministic
    assert names[0][0] == ["img_0.png"]
    assert names[0][3] == ["000003_0.png"]  # a URL input keeps the index form
    assert len({n[0] for n in names[0].values()}) == 4
    assert isinstance(requests[0].image_urls[0], LocalImage)
