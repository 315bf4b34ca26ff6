"""Frame ranges read in few requests: neighbouring fragments as one span, distant ones apart."""

from __future__ import annotations

import os
from pathlib import Path

from dicomrpc_server.retrieve.service import MAX_GAP, _spans
from dicomrpc_server.storage.file_reader import FileReader


class Counting(FileReader):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[tuple[int, int]] = []

    def pread(self, size: int, offset: int) -> bytes:
        self.reads.append((offset, size))
        return super().pread(size, offset)


def test_fragments_a_header_apart_are_one_read_and_distant_ones_another(tmp_path: Path) -> None:
    data = os.urandom(400_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    ranges = [(100, 1000), (1108, 2000), (3116, 10), (3126 + MAX_GAP + 1, 500), (399_990, 100)]
    with Counting(path) as reader:
        parts = [span[start : start + length] for span, start, length in _spans(reader, ranges)]
        assert reader.reads == [(100, 3026), (3126 + MAX_GAP + 1, 500), (399_990, 100)]
    assert parts == [data[offset : offset + length] for offset, length in ranges]
