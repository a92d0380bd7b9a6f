"""Peak memory of decoding one "bomb" file per limit (docs/data-safety.md, docs/benchmarks.md).

    .venv/bin/python -m benchmarks.bench_decode_bombs

Builds the files of tests/unit/test_decode_bombs.py in a temporary folder, decodes each in a fresh
Python process and prints, per file, the growth of that process's peak resident memory (VmHWM,
reset before each decode) and the outcome, with the machine's load average.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from multimodal.config import preset
from tests.unit.test_decode_bombs import PROBE, long_flac, png_bomb, video


def main() -> int:
    tiny = preset("tiny").media
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        cases = [
            ("image_small", png_bomb(root / "small.png", 300), tiny),
            ("audio_short", long_flac(root / "short.flac", seconds=1, channels=1, rate=16000), tiny),
            ("video_small", video(root / "small.mp4", "mp4", "mpeg4", frames=4, side=32), tiny),
            ("image_13000", png_bomb(root / "bomb.png", 13000), tiny),
            ("audio_long_8ch", long_flac(root / "long.flac", seconds=240, channels=8, rate=16000), tiny),
            ("video_huge_frames", video(root / "huge.mp4", "mp4", "mpeg4", frames=2, side=4000), tiny),
            ("video_unknown_count", video(root / "many.mkv", "matroska", "mpeg4", frames=800, side=16),
             tiny.model_copy(update={"video_size": 256})),
        ]
        argument = json.dumps([(n, str(p), s.model_dump_json()) for n, p, s in cases])
        sizes = {n: p.stat().st_size for n, p, _ in cases}
        out = subprocess.run([sys.executable, "-c", PROBE, argument], capture_output=True, text=True, check=True)
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for name, result in results.items():
        print(f"{name:<22} {sizes[name] / 1e3:>9.1f} kB on disk  peak +{result['peak_mb']:7.1f} MB  "
              f"{result['outcome'][:60]}")
    print(f"load average: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
