"""``bench/sequence_parallel.py --train`` keeps running: a tiny table (1 and 2 ranks, Ulysses and ring, a
padded and an unpadded clip) whose measured bytes equal the formulas."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_training_bench_smoke(tmp_path):
    out = tmp_path / "sp_train.md"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "sequence_parallel.py"), "--train", "--degrees", "1", "2",
                        "--layouts", "ulysses", "ring", "--clips", "2x12", "--repeats", "1", "--warmup", "0",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "tokens" not in line]
    assert len(rows) == 3  # N=1, N=2 ulysses, N=2 ring
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert [c[0] for c in cells] == ["9 (9)", "9 (10)", "9 (10)"]
    assert [(c[1], c[2]) for c in cells[:3]] == [("1", "-"), ("2", "ulysses"), ("2", "ring")]
    for c in cells:
        assert float(c[4]) > 0 and float(c[7]) == float(c[8]), c  # step time; measured bytes == formula
        assert (float(c[7]) > 0) == (c[1] != "1"), c
