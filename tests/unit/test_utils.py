"""megagrape.utils: atomic writes, the distribution check, name hints, JSONL reading, hashing."""

from __future__ import annotations

import hashlib
import json

import pytest

from megagrape.errors import ConfigError, DataError
from megagrape.utils.atomic import atomic_open, atomic_path, write_atomic, write_json_atomic
from megagrape.utils.distribution import SUM_TOLERANCE, checked_distribution
from megagrape.utils.hashing import sha256_file
from megagrape.utils.jsonl import read_jsonl
from megagrape.utils.names import did_you_mean

NAMES = ["web", "code", "books"]


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "new" / "dir" / "out.json"  # parents are created
    write_json_atomic(path, {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    write_atomic(path, "text ü\n")
    assert path.read_text(encoding="utf-8") == "text ü\n"
    write_atomic(path, b"\x00bytes", fsync=False)
    assert path.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(path) as stream:
        stream.write("half")
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    with pytest.raises(ValueError, match="mode"), atomic_open(path, "a"):
        pass


def test_distribution_is_renormalised_within_the_one_tolerance():
    rounded = checked_distribution([0.3334, 0.3334, 0.3333], NAMES, what="w", error=ValueError)
    assert sum(rounded) == pytest.approx(1.0, abs=1e-15)
    assert checked_distribution([2, 3, 5], NAMES, what="w", error=ValueError, normalize=True) == [
        0.2,
        0.3,
        0.5,
    ]
    off = 1.0 + 2 * SUM_TOLERANCE
    with pytest.raises(ConfigError, match=r"my field: the weights sum to 1\.002, not 1.*my hint"):
        checked_distribution(
            [off / 3] * 3, NAMES, what="my field", error=ConfigError, sum_hint="my hint"
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.5, -0.1, 0.6], r"domain 'code' \(index 1\) is -0\.1.*finite number >= 0"),
        ([0.5, float("nan"), 0.5], r"domain 'code' \(index 1\) is nan"),
        ([0.5, "x", 0.5], r"domain 'code' \(index 1\) is 'x'"),
        ([True, 0.0, 0.0], r"domain 'web' \(index 0\) is True"),
        ([0.0, 0.0, 0.0], r"sum to 0; at least one domain needs a positive weight"),
        ([0.2, 0.2, 0.2], r"sum to 0\.6, not 1 \(tolerance 0\.001\); divide each weight"),
    ],
)
def test_bad_distributions_name_the_field_domain_and_value(values, message):
    with pytest.raises(DataError, match=f"^initial: .*{message}"):
        checked_distribution(values, NAMES, what="initial", error=DataError)


def test_did_you_mean():
    assert did_you_mean("grap", ["grape", "doge"]) == "did you mean 'grape'?"
    assert did_you_mean("xyz", ["grape", "doge"]) == ""
    assert did_you_mean("a", []) == ""


def test_read_jsonl_and_sha256(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text('{"a": 1}\n[2]\n')
    with pytest.raises(DataError, match=r"r\.jsonl:2: expected a JSON object"):
        read_jsonl(path)
