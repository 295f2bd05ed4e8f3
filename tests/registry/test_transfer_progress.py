"""Transfer progress: a large blob is one progress task, ended as done when all its bytes
arrived and as failed when the transfer stopped short or overran."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from mkimage import progress
from mkimage.errors import VerifyError
from mkimage.registry.artifact import Descriptor
from mkimage.registry.transfer import PROGRESS_MIN_BYTES, capped_blob

SIZE = 2 * PROGRESS_MIN_BYTES
DESC = Descriptor("application/vnd.linux.bzimage", "sha256:" + "0" * 64, SIZE, "bzImage")


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    progress.bind(progress.PlainRenderer(out))
    try:
        yield out
    finally:
        progress.bind(None)


def chunks(total: int) -> Iterator[bytes]:
    while total:
        n = min(total, 3 << 20)  # not a divisor of SIZE: an overrun arrives inside a chunk
        total -= n
        yield bytes(n)


def test_a_whole_blob_ends_its_task_as_done(lines: io.StringIO) -> None:
    assert sum(map(len, capped_blob(chunks(SIZE), DESC, "where"))) == SIZE
    assert lines.getvalue().splitlines()[-1].startswith("mkspawn: pull: bzImage: done (")


@pytest.mark.parametrize(("received", "code"), [(SIZE // 2, "truncated"), (SIZE + (1 << 20), "blob-too-large")],
                         ids=["short", "overrun"])
def test_a_blob_that_stops_short_or_overruns_ends_its_task_as_failed(lines: io.StringIO, received: int,
                                                                     code: str) -> None:
    failed: list[str] = []
    renderer = progress.renderer()
    original = renderer.finished

    def finished(task: progress.Task, ok: bool) -> None:
        if not ok:
            failed.append(task.name)
        original(task, ok)

    renderer.finished = finished  # type: ignore[method-assign]
    with pytest.raises(VerifyError) as info:
        for _ in capped_blob(chunks(received), DESC, "where"):
            pass
    assert info.value.code == code
    assert failed == ["pull: bzImage"]
    assert "done" not in lines.getvalue()
