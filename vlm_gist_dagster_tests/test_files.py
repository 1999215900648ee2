"""The file helpers every writer uses: atomic replacement, no temporary leftovers, the default mode."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from vlm_gist_dagster.files import atomic_path, atomic_write, file_sha256


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "leaderboard.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half a ne")
            raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.csv"]


def test_the_temporary_file_keeps_the_suffix_and_the_result_the_default_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "sub" / "plot.png") as temporary:
            assert temporary.parent == tmp_path / "sub" and temporary.suffix == ".png"
            assert temporary.name.startswith(".plot.png.") and temporary.exists()
            temporary.write_bytes(b"\x89PNG")
    finally:
        os.umask(umask)
    assert (tmp_path / "sub" / "plot.png").read_bytes() == b"\x89PNG"
    assert (tmp_path / "sub" / "plot.png").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "definitions.json"
    texts = [f"writer {i} " * 10_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write, args=(target, t)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_text() in texts  # one whole writer's text, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["definitions.json"]


def test_file_sha256_is_hashlib_over_the_whole_file(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    path = tmp_path / "image.jpg"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert atomic_write(tmp_path / "t.txt", "é\n").read_bytes() == "é\n".encode()
