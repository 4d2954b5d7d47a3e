"""Issue 11's data cases: every one stops collect with the file and the column (or the fix) named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import collect
from pipelines.files import DataError
from tests.conftest import ROOT, make_params


def _collect(tmp_path: Path, name: str, data: bytes, **params: str):
    path = tmp_path / name
    path.write_bytes(data)
    return collect.run(make_params(data={"source": f"csv:{path}", "target": "y", **params}), tmp_path / "collect")


def test_duplicate_column_names_are_refused(tmp_path):
    rows = "".join(f"{i},{i % 3},{i * 2},{i % 2}\n" for i in range(30))
    with pytest.raises(DataError, match=r"t\.csv: duplicate column name 'age' \(columns 1 and 3 of the header\)"):
        _collect(tmp_path, "t.csv", ("age,b,age,y\n" + rows).encode())
    assert not (tmp_path / "collect").exists()


def test_non_utf8_file_gets_the_fix_in_the_message(tmp_path):
    rows = "".join(f"{i},{'好' if i % 2 else '差'},{i % 2}\n" for i in range(30))
    with pytest.raises(DataError, match=r"t\.csv: not UTF-8 text \(byte 0x.. at byte \d+; a GBK.*iconv -f GBK -t UTF-8"):
        _collect(tmp_path, "t.csv", ("x,word,y\n" + rows).encode("gbk"))


def test_values_beyond_float32_are_refused_in_collect(tmp_path):
    rows = "".join(f"{1e308 if i == 7 else i * 1.5},{i % 2}\n" for i in range(30))
    with pytest.raises(DataError, match=r"row 7, column 'x': value 1e\+308 is outside the float32 range"):
        _collect(tmp_path, "t.csv", ("x,y\n" + rows).encode())


def test_data_raw_exists_for_the_readme_commands():
    assert (ROOT / "data" / "raw").is_dir()
