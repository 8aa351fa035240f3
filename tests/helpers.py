"""Shared test helpers: run a recipe in-process through Hydra's compose API or as a subprocess."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
QUIET = ["logger=disabled", "threads=1"]


def compose_cfg(recipe: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=recipe, overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def run_in_process(recipe: str, overrides: list[str]) -> int:
    """Compose and run a recipe's body in this process; returns its exit code.

    The body runs in the GEMM mode `run_recipe` enters (cpu_half_gemm, bench/precision/cpu_gemm.py):
    what `python -m recipes.X` runs and what the run's summary.json records as `half_gemm`. On a CPU
    without native bf16 that is fp32 GEMMs on the half-valued operands, 15-35x faster than torch's
    native bf16/fp16 CPU kernels; `cpu_half_gemm=native` in `overrides` keeps the native kernels."""
    from bench.precision.cpu_gemm import half_gemm_mode
    from bench.run.session import Session
    import importlib

    mod = importlib.import_module(f"recipes.{recipe}")
    cfg = compose_cfg(recipe, QUIET + overrides)
    OmegaConf.resolve(cfg)
    session = Session(cfg, recipe)
    with half_gemm_mode(cfg.cpu_half_gemm, session.device):
        return mod.train(session)


def run_cli(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_torchrun(args: list[str], nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=nproc -m <args>` on a free local port (gloo on CPU)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return run_cli(["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
                    "--master_addr=127.0.0.1", "-m", *args], timeout=timeout)
