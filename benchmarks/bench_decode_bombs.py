"""Peak memory of decoding one "bomb" file per limit (docs/data-safety.md, docs/benchmarks.md).

    .venv/bin/python -m benchmarks.bench_decode_bombs

Builds the files of tests/unit/test_decode_bombs.py in a temporary folder, decodes each in a fresh
Python process and prints, per file, the growth of that process's peak resident memory (VmHWM,
reset before each decode) and the outcome, with the machine's load average.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from tests.unit.test_decode_bombs import bomb_cases, decode_in_fresh_process


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        cases = bomb_cases(Path(folder))
        sizes = {name: path.stat().st_size for name, path, _ in cases}
        results = decode_in_fresh_process(cases)
    for name, result in results.items():
        print(f"{name:<22} {sizes[name] / 1e3:>9.1f} kB on disk  peak +{result['peak_mb']:7.1f} MB  "
              f"{result['outcome'][:60]}")
    print(f"load average: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
