"""Where a run writes what happened: metrics.jsonl, samples.jsonl, optional TensorBoard / W&B.

`metrics.jsonl` holds one JSON object per training step (flat keys like `reward/judge`,
`time/rollout_s`) and one per evaluation (`"event": "eval"`). On resume, lines for steps at or
after the resumed step are dropped so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null reads as "not measured"
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class RunLog:
    def __init__(self, run_dir: Path, *, tensorboard: bool = False, wandb: bool = False,
                 wandb_project: str = "rlkd", run_name: str = "", config: dict | None = None) -> None:
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # tensorboard is an optional extra
                raise RuntimeError("log.tensorboard = true needs `pip install rlkd[logging]` (tensorboard)") from err
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as err:
                raise RuntimeError("log.wandb = true needs `pip install rlkd[logging]` (wandb)") from err
            self._wandb = wandb_module.init(project=wandb_project, name=run_name or None, config=config, dir=str(run_dir))

    def truncate_from(self, step: int) -> None:
        """Drops records of steps >= `step` (they will be redone after a resume).

        A run killed while writing leaves a torn last line: it is dropped. A line before it
        that is not a JSON object (edited by hand?) is kept as it is: its step is unknown, and
        nothing is thrown away that resume cannot redo. The file is replaced atomically."""
        for path in (self.metrics_path, self.samples_path):
            if not path.exists():
                continue
            lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
            kept = []
            for i, line in enumerate(lines):
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                    if i == len(lines) - 1:
                        continue  # a torn write
                if not isinstance(record, dict) or not isinstance(record.get("step", 0), int) or record.get("step", 0) < step:
                    kept.append(line)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            tmp.replace(path)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        with self.samples_path.open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **{k: _jsonable(v) for k, v in row.items()}}) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
