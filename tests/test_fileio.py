"""difflab.fileio: atomic writes leave the old file intact and no temporary on failure."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from difflab import fileio
from difflab.fileio import (
    append_json_record,
    read_json,
    remove_stale_temp_files,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_round_trips(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text("utf-8") == "héllo\n"
    obj = {"b": [1, 2.5, None], "a": "x"}
    write_json_atomic(tmp_path / "a.json", obj)
    assert read_json(tmp_path / "a.json") == obj
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.txt", "b.bin"]


@pytest.mark.parametrize("where", ["fsync", "write", "replace"])
def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch, where):
    """A full disk at any stage: the old bytes stay, no `.tmp-` file remains, the error surfaces."""
    target = tmp_path / "results.json"
    old = json.dumps([{"fid": 1.0}] * 500).encode()  # > 4096 bytes: a truncation would show
    target.write_bytes(old)
    if where == "fsync":
        monkeypatch.setattr(fileio.os, "fsync", _disk_full)
    elif where == "replace":
        monkeypatch.setattr(fileio.os, "replace", _disk_full)
    else:
        real_open = open

        class FullFile:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[:4096])
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(
            "builtins.open", lambda p, mode="r", *a, **k: FullFile(real_open(p, mode, *a, **k))
        )
    with pytest.raises(OSError) as err:
        append_json_record(target, {"fid": 2.0})
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_bytes() == old
    assert os.listdir(tmp_path) == ["results.json"]


def test_write_into_read_only_dir_leaves_nothing(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "x.json").write_text("[]")
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            write_json_atomic(folder / "x.json", [1])
        assert (folder / "x.json").read_text() == "[]"
        assert os.listdir(folder) == ["x.json"]
    finally:
        folder.chmod(0o755)


def test_read_json_names_file_and_position(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"a": 1},\n  {"a": \n')
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON: .* line 4 column 1"):
        read_json(bad)
    bad.write_bytes(b'["\xff"]')
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON: not UTF-8 at byte 2"):
        read_json(bad)


def test_append_json_record(tmp_path):
    out = tmp_path / "r.json"
    assert append_json_record(out, {"a": 1}) == [{"a": 1}]
    assert append_json_record(out, {"a": 2}) == [{"a": 1}, {"a": 2}]
    assert read_json(out) == [{"a": 1}, {"a": 2}]
    write_json_atomic(out, {"not": "a list"})
    with pytest.raises(ValueError, match=r"r\.json holds a JSON dict, not a list"):
        append_json_record(out, {"a": 3})
    assert read_json(out) == {"not": "a list"}


def test_append_json_record_keeps_every_record_of_concurrent_writers(tmp_path):
    """Two processes appending to one file at once (two `difflab eval --out` runs) lose
    nothing: the read-modify-write is under `exclusive_lock`. Both writers wait for a start
    signal so that their appends overlap (without the lock about half the records are lost)."""
    out, go = tmp_path / "shared.json", tmp_path / "go"
    script = (
        "import os, sys, time; from difflab.fileio import append_json_record\n"
        "open(sys.argv[3], 'w').close()\n"
        "while not os.path.exists(sys.argv[4]): time.sleep(0.001)\n"
        "for i in range(100): append_json_record(sys.argv[1], {'writer': sys.argv[2], 'i': i})"
    )
    ready = {w: tmp_path / f"ready_{w}" for w in "ab"}
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(out), w, str(ready[w]), str(go)])
        for w in "ab"
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    records = read_json(out)
    for w in "ab":  # every record, each writer's in its own order
        assert [r["i"] for r in records if r["writer"] == w] == list(range(100))


def test_remove_stale_temp_files_spares_live_writers(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead, live.pid):
            (tmp_path / f".latest.tmp-{pid}").write_text("x")
            (tmp_path / f".tmp-step_0000004-{pid}").mkdir()
            (tmp_path / f".tmp-step_0000004-{pid}" / "model.safetensors").write_text("x")
        (tmp_path / "keep.json").write_text("[]")
        (tmp_path / "step_0000002").mkdir()
        removed = remove_stale_temp_files(tmp_path)
        assert sorted(p.name for p in removed) == [
            f".latest.tmp-{dead}",
            f".tmp-step_0000004-{dead}",
        ]
        assert sorted(os.listdir(tmp_path)) == sorted(
            [
                f".latest.tmp-{live.pid}",
                f".tmp-step_0000004-{live.pid}",
                "keep.json",
                "step_0000002",
            ]
        )
    finally:
        live.kill()
        live.wait()
