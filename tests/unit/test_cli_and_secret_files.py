"""jobs/evaluate.py refuses bad numbers in one line; the cluster's token file is private from birth."""

from __future__ import annotations

import os
import stat

import pytest

from cluster.local import write_private_file
from jobs.evaluate import main as evaluate_main


@pytest.mark.parametrize("flag, value", [("--max-samples", "-1"), ("--max-samples", "0"),
                                         ("--batch-size", "0"), ("--examples", "-2"),
                                         ("--batch-size", "many")])
def test_evaluate_rejects_bad_numbers_in_one_line(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as excinfo:
        evaluate_main(["--model", str(tmp_path / "m"), "--data", str(tmp_path / "d"), flag, value])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and flag in err[0]


def test_private_file_is_0600_whatever_the_umask(tmp_path):
    old_umask = os.umask(0)
    try:
        fresh = tmp_path / "token"
        write_private_file(fresh, "secret-1")
        existing = tmp_path / "old-token"
        existing.write_text("a much longer old secret")
        existing.chmod(0o644)
        write_private_file(existing, "secret-2")
    finally:
        os.umask(old_umask)
    for path, text in ((fresh, "secret-1"), (existing, "secret-2")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text() == text
