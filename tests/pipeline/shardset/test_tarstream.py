"""The lean tar reader against Python's tarfile and webdataset's grouping, on every header
kind the writers can produce, and on damaged tars."""

import io
import tarfile

import pytest
import webdataset as wds

from pipeline.errors import ShardError
from pipeline.shardset import tar as tarstream

MEMBERS = [
    ("00000000.png", b"\x89PNG" + bytes(600)),
    ("00000000.label.cls", b"3"),
    ("00000000.TRUE.cls", b"4"),
    ("__meta__", b"skip me"),
    ("00000001.png", bytes(512)),
    ("00000001.label.cls", b"7"),
    ("d/" + "k" * 120 + ".png", b"long"),
    ("d/" + "k" * 120 + ".label.cls", b"1"),
    ("caf\u00e9/00000002.png", b"unicode"),
    ("caf\u00e9/00000002.label.cls", b"0"),
]


def _tar(fmt: int, members=MEMBERS) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        d = tarfile.TarInfo("adir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _reference(raw: bytes, url: str = "mem.tar") -> list[dict]:
    files = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tar:
        for m in tar:
            if m.isreg():
                files.append({"fname": m.name, "data": tar.extractfile(m).read(), "__url__": url})
    files = [f for f in files if not (f["fname"].startswith("__") and f["fname"].endswith("__"))]
    return list(wds.tariterators.group_by_keys(files))


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_samples_equal_tarfile_and_webdataset_grouping(fmt):
    raw = _tar(fmt)
    got = list(tarstream.group_samples(tarstream.tar_members(io.BytesIO(raw), "mem.tar"), "mem.tar"))
    assert got == _reference(raw)
    assert [s["__key__"] for s in got] == ["00000000", "00000001", "d/" + "k" * 120, "caf\u00e9/00000002"]
    assert got[0]["true.cls"] == b"4"  # extensions lower-cased


def test_ustar_prefix_field_names():
    name = "p" * 90 + "/" + "q" * 60 + "/00000009.png"  # > 100 characters: split into prefix and name
    raw = _tar(tarfile.USTAR_FORMAT, [(name, b"x"), (name.replace(".png", ".label.cls"), b"2")])
    got = list(tarstream.group_samples(tarstream.tar_members(io.BytesIO(raw), "u.tar"), "u.tar"))
    assert got == _reference(raw, "u.tar") and got[0]["__key__"] == name[:-4]


def test_a_bad_checksum_or_a_cut_names_the_shard():
    raw = bytearray(_tar(tarfile.GNU_FORMAT))
    raw[512 + 10] ^= 0xFF  # a byte of the second header's name (the first is the directory's)
    with pytest.raises(ShardError, match="shard s.tar: truncated or corrupt tar \\(bad header checksum\\)"):
        list(tarstream.tar_members(io.BytesIO(bytes(raw)), "s.tar"))
    cut = _tar(tarfile.GNU_FORMAT)[: 512 * 2 + 100]
    with pytest.raises(ShardError, match="shard s.tar: truncated or corrupt tar \\(unexpected end of data"):
        list(tarstream.tar_members(io.BytesIO(cut), "s.tar"))


def test_a_duplicate_member_is_an_error():
    raw = _tar(tarfile.USTAR_FORMAT, [("00000000.png", b"a"), ("00000000.png", b"b")])
    with pytest.raises(ShardError, match="shard d.tar: duplicate member 00000000.png"):
        list(tarstream.group_samples(tarstream.tar_members(io.BytesIO(raw), "d.tar"), "d.tar"))
