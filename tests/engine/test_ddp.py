"""Two CPU ranks under torchrun (gloo): disjoint shares, one writer, equal final weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pansight.engine.checkpoint import load_checkpoint

SCRIPT = Path(__file__).with_name("tiny_training.py")


@pytest.mark.ddp
def test_two_ranks_share_the_data_and_agree_on_the_weights(tmp_path: Path) -> None:
    # 32 images, 4 per batch per rank, 2 epochs: 8 iterations on each of the two ranks, with a
    # checkpoint at iteration 4 and a log line at iteration 5 (see tiny_train_config).
    out, records = tmp_path / "run", tmp_path / "records"
    records.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        str(SCRIPT), "--out", str(out), "--record-dir", str(records),
        "--images", "32", "--batch-size", "4", "--epochs", "2",
    ]  # fmt: skip
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]

    rank0, rank1 = (json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["iterations"] == rank1["iterations"] == 8
    for epoch in (0, 1):
        share0, share1 = (
            set(rank["indices"][16 * epoch : 16 * (epoch + 1)]) for rank in (rank0, rank1)
        )
        assert len(share0) == len(share1) == 16
        assert share0 | share1 == set(range(32))  # disjoint halves covering the data set

    last, final = str(out / "last.pt"), str(out / "model.pt")
    assert rank0["saved"] == [last, last, final]
    assert rank1["saved"] == []
    assert load_checkpoint(out / "last.pt")["trainer"]["iteration"] == 8
    logged = [json.loads(line)["iter"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [5]

    assert rank0["parameters"] == rank1["parameters"]
