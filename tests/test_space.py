"""Recognising a lack of space, and the error it is answered with."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from dicomrpc_server.errors import Code
from dicomrpc_server.storage.space import (
    OUT_OF_RESOURCES,
    STORAGE_FULL,
    cut_short_by_space,
    space_errno,
    storage_full,
)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_full_disk_a_quota_and_a_file_too_large_are_a_lack_of_space(code: int) -> None:
    assert space_errno(OSError(code, "x")) == code


@pytest.mark.parametrize(
    "exc", [OSError(errno.EIO, "x"), OSError(errno.EACCES, "x"), ValueError("x"), OSError("x")]
)
def test_other_failures_are_not(exc: Exception) -> None:
    assert space_errno(exc) is None


def test_an_io_error_is_a_lack_of_space_only_on_a_volume_left_without_a_page(
    tmp_path: Path,
) -> None:
    beyond = shutil.disk_usage(tmp_path).free + 2**40  # a page larger than what is free
    eio = OSError(errno.EIO, "x")
    assert not cut_short_by_space(eio, tmp_path, page=1)
    assert cut_short_by_space(eio, tmp_path, page=beyond)
    assert not cut_short_by_space(OSError(errno.EACCES, "x"), tmp_path, page=beyond)


def test_the_error_names_the_step_the_errno_and_the_free_space(tmp_path: Path) -> None:
    error = storage_full(OSError(errno.EDQUOT, "x"), tmp_path, "writing the instance's file")
    assert error.code is Code.RESOURCE_EXHAUSTED
    assert error.reason == STORAGE_FULL
    assert error.dicom_status == OUT_OF_RESOURCES == 0xA700
    assert "writing the instance's file failed with EDQUOT" in error.message
    assert f"{error.metadata['free_bytes']} bytes are free" in error.message
    assert error.metadata["errno"] == "EDQUOT"
