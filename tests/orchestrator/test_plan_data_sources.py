"""`spottune plan` over the new data inputs: Parquet (checked with the trainer's parser through `datasets`,
priced at full rows) and TRL-format JSONL (counted), both without importing torch."""
from __future__ import annotations

import json

from tests.orchestrator.helpers import TRAIN_DATA, run_cli, write_spec


def test_plan_takes_parquet_and_trl_rows_without_torch(tmp_path):
    rows = [json.loads(line) for line in TRAIN_DATA.read_text(encoding="utf-8").splitlines()[:20]]
    trl = tmp_path / "trl.jsonl"
    trl.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": row["instruction"]}],
                                       "completion": [{"role": "assistant", "content": row["output"]}]}) + "\n"
                           for row in rows), encoding="utf-8")
    import datasets

    parquet = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    for data in (trl, parquet):
        spec = write_spec(tmp_path, config={"data": {"train": str(data)}}, name=f"{data.stem}.yaml")
        result = run_cli("plan", str(spec), "--csv", check_no_torch=True)
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) > 1, "a header and priced rows"
