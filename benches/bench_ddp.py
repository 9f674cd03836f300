"""Data-parallel rlkd-train at 1 and N ranks: the same config under `torchrun`, timed per step.

    python benches/bench_ddp.py configs/gpu-ddp.toml --nproc 1,8          # a node with 8 GPUs (NCCL)
    python benches/bench_ddp.py configs/tiny.toml --nproc 1,2 --cores 2 --set ...   # CPU (gloo)

For each N it runs `torchrun --standalone --nproc_per_node N -m rlkd.cli train CONFIG` (the
extra `--set` overrides apply to every run; output under --out), then reads the run's
metrics.jsonl: per step the response tokens (P x G x mean length) and the step's wall time (the
sum of its time/*_s phases, each the slowest rank's), skipping the first step (warm-up).
Prints a markdown table -- tokens/s in all, tokens/s per rank, speed-up over N=1 -- and whether
the N-rank run's final policy equals the 1-rank run's (max |diff| of the checkpoint weights;
meaningful with rollout.seed_per_prompt = true). Writes bench_ddp.json next to the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, n: int, out: Path, overrides: list[str]) -> tuple[Path, float]:
    out.mkdir(parents=True, exist_ok=True)
    sets = [f"run.output_dir={json.dumps(str(out))}", *overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "rlkd.cli", "train", config] + [a for s in sets for a in ("--set", s)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ})
    wall = time.perf_counter() - start
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir, wall


def step_figures(run_dir: Path, prompts_x_g: int) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "event" not in r][1:] or [r for r in rows if "event" not in r]
    tokens = sum(r["response/length_mean"] * prompts_x_g for r in steps)
    seconds = sum(v for r in steps for k, v in r.items() if k.startswith("time/") and isinstance(v, (int, float)))
    return {"steps_timed": len(steps), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    def last(run_dir: Path) -> dict:
        name = (run_dir / "checkpoints" / "latest").read_text().strip()
        files = sorted((run_dir / "checkpoints" / name).glob("*.safetensors"))
        return {k: v for f in files for k, v in load_file(f).items()}

    x, y = last(a), last(b)
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--nproc", default="1,2", help="comma-separated rank counts; the first is the baseline")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--cores", type=int, default=0,
                   help="CPU runs: run.torch_threads = cores // N for N ranks (0: leave the config's)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/bench_ddp")))
    args = p.parse_args(argv)

    from rlkd.config import load_config

    cfg = load_config(args.config, args.overrides)
    prompts_x_g = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    results = []
    for n in [int(x) for x in args.nproc.split(",")]:
        threads = [f"run.torch_threads={max(1, args.cores // n)}"] if args.cores else []
        run_dir, wall = run(args.config, n, args.out / f"n{n}", args.overrides + threads)
        results.append({"nproc": n, "run_dir": str(run_dir), "wall_s": wall, **step_figures(run_dir, prompts_x_g)})
    base = results[0]
    lines = ["| ranks | steps timed | response tokens/s | per rank | speed-up | job wall s | max weight diff vs first |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        r["max_weight_diff"] = max_weight_diff(Path(r["run_dir"]), Path(base["run_dir"]))
        lines.append(f"| {r['nproc']} | {r['steps_timed']} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / r['nproc']:.1f} "
                     f"| {r['tokens_per_s'] / base['tokens_per_s']:.2f} | {r['wall_s']:.0f} | {r['max_weight_diff']:.2e} |")
    (args.out / "bench_ddp.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
