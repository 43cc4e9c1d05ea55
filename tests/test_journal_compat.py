"""A journal written before the model-neutral core (issue 30) resumes unchanged."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from seedream_async import EditRequest
from seedream_async.simulator import Simulator, _Task
from tests.conftest import ClientFactory

#: Made by the release before issue 30 (tests/data/README.md says how): inputs 1 and 5
#: succeeded, 3 failed, 0, 2 and 4 were accepted and still running when the run stopped.
LEGACY = Path(__file__).parent / "data" / "journal-before-models.sqlite"
PENDING = {
    0: "task_seedream_1796676462082_4",
    2: "task_seedream_1796676462082_5",
    4: "task_seedream_1796676462083_6",
}
#: The image the even inputs used (a journal knows a file by its content, not its path).
PNG = b"\x89PNG\r\n\x1a\n" + b"legacy journal image" * 8


def legacy_requests(image: Path) -> list[EditRequest]:
    """The inputs of that batch, as its caller built them."""
    made = []
    for n in range(6):
        urls: list[str | Path] = [f"https://img.example/legacy/{n}.png"]
        if n % 2 == 0:
            urls.append(image)
        made.append(
            EditRequest(
                prompt=f"legacy edit {n}",
                image_urls=urls,
                aspect_ratio="16:9" if n == 3 else "1:1",
            )
        )
    return made


async def test_a_journal_of_the_previous_release_resumes_with_nothing_resent(
    tmp_path: Path, sim: Simulator, make_client: ClientFactory
) -> None:
    journal = tmp_path / "j.sqlite"
    shutil.copy(LEGACY, journal)
    image = tmp_path / "moved" / "in.png"  # another folder: the content is what counts
    image.parent.mkdir()
    image.write_bytes(PNG)
    requests = legacy_requests(image)
    for index, task_id in PENDING.items():  # the service still has the running tasks
        sim.tasks[task_id] = _Task(
            task_id=task_id,
            request=requests[index],
            callback_url=None,
            created=time.monotonic(),
            latency=0.0,
            fails=False,
            files_base=sim.url / "files",
            images=1,
        )
    async with make_client() as client:
        items = [item async for item in client.edit_many(requests, journal=journal)]
    assert sim.stats.create_requests == 0
    assert sim.stats.uploads == 0
    by_index = {item.index: item for item in items}
    assert sorted(by_index) == list(range(6))
    assert {i for i, item in by_index.items() if item.from_journal} == {1, 3, 5}
    assert by_index[3].status == "failed"
    assert all(by_index[i].ok for i in (0, 1, 2, 4, 5))
    for index, task_id in PENDING.items():
        result = by_index[index].result
        assert result is not None
        assert result.task_id == task_id
