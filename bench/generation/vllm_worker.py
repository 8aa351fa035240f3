"""The vLLM side of generator.backend=vllm (DESIGN §13): one engine, served over a unix socket.

This file runs INSIDE the vLLM venv (scripts/setup_vllm.sh), as a plain script:

    .venv-vllm/bin/python bench/generation/vllm_worker.py --model DIR --socket PATH [...]

with the connection's authkey in the environment (FP8BENCH_VLLM_AUTHKEY, hex), never on the
command line. It imports nothing from `bench`: that venv has vLLM's transformers pin, not the
project. bench/generation/vllm_client.py (project venv) starts it and documents the protocol.

Why a `multiprocessing.connection` Listener on a unix socket, not pickles over stdin/stdout:
vLLM, its engine-core child and torch all write to the process's stdout/stderr (logs, progress,
warnings), so a byte stream shared with them cannot carry framed messages safely. The socket is a
channel of its own; the stdlib gives it message framing and an HMAC handshake (authkey), so only
the process that started the worker can talk to it. Both ends pickle plain Python only (dict,
list, int, float, str, None): the two interpreters never exchange torch or vLLM objects.

Start-up: the worker binds the socket first, then builds the engine, then sends one message to
the first client, {"ok": True, "result": info()} or {"ok": False, "error": "one line"}. After
that every request {"op": NAME, **kwargs} gets one reply of the same shape, in order.
"""
from __future__ import annotations

import os
import sys

# Run as a file, Python puts this folder first on sys.path, and its siblings (kernels.py, ...)
# would shadow top-level modules that vLLM or transformers import. Drop it before any import.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import time  # noqa: E402
from multiprocessing.connection import Listener  # noqa: E402

LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs", "raw_logits", "processed_logits")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF-format directory (config.json, weights)")
    p.add_argument("--socket", required=True, help="unix socket path to listen on")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--quantization", default=None, help="e.g. fp8 (weights); default: none")
    p.add_argument("--logprobs-mode", default="raw_logprobs", choices=LOGPROBS_MODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="GPU only; on CPU the KV cache size is VLLM_CPU_KVCACHE_SPACE (GiB)")
    return p.parse_args(argv)


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception as one line: its type and its message's lines joined (pydantic's validation
    errors name the bad field only on their second and third lines), cut at `limit` chars."""
    msg = " | ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
    line = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def build_engine(args):
    from vllm import LLM

    kw = dict(model=args.model, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
              quantization=args.quantization, logprobs_mode=args.logprobs_mode, seed=args.seed,
              max_model_len=args.max_model_len, enforce_eager=True, skip_tokenizer_init=True)
    if args.gpu_memory_utilization is not None:
        kw["gpu_memory_utilization"] = args.gpu_memory_utilization
    return LLM(**kw)


class Server:
    """Requests -> vLLM calls. Every handler takes and returns plain Python."""

    def __init__(self, llm, args):
        self.llm, self.args = llm, args

    def info(self):
        import torch
        import vllm

        cfg = self.llm.llm_engine.vllm_config
        return {"vllm": vllm.__version__, "torch": torch.__version__,
                "device": cfg.device_config.device_type,
                "dtype": str(cfg.model_config.dtype).removeprefix("torch."),
                "kv_cache_dtype": cfg.cache_config.cache_dtype,
                "quantization": cfg.model_config.quantization,
                "logprobs_mode": cfg.model_config.logprobs_mode,
                "max_model_len": cfg.model_config.max_model_len, "pid": os.getpid()}

    def generate(self, prompt_token_ids, n=1, temperature=1.0, top_p=1.0, top_k=0,
                 max_tokens=16, seed=None, stop_token_ids=None, ignore_eos=False):
        """Samples n completions per prompt. Sample j of prompt i is its own request with seed
        `seed + i*n + j` (when seed is given), so each sample is reproducible on its own, however
        the batch is composed. Returns [prompt][sample] dicts: token_ids, logprobs (the sampled
        tokens', in the engine's logprobs_mode), finish_reason."""
        from vllm import SamplingParams

        prompts, params = [], []
        for i, ids in enumerate(prompt_token_ids):
            for j in range(n):
                prompts.append({"prompt_token_ids": list(ids)})
                params.append(SamplingParams(
                    n=1, temperature=temperature, top_p=top_p, top_k=top_k,
                    max_tokens=max_tokens, seed=None if seed is None else seed + i * n + j,
                    stop_token_ids=list(stop_token_ids or []), ignore_eos=ignore_eos,
                    logprobs=0, detokenize=False))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        samples = [_sample(o.outputs[0]) for o in outs]
        return [samples[i * n:(i + 1) * n] for i in range(len(prompt_token_ids))]

    def score(self, prompt_ids, completion_ids):
        """Teacher-forced log-probs of the given completion tokens after their prompts: the
        prompt log-probs of the full sequence (one request each, max_tokens=1). Always raw
        (log_softmax of the logits): vLLM's prompt tokens skip the sampling processors, so
        processed_logprobs gives the same scores (v1/worker/gpu_model_runner.py)."""
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        prompts = [{"prompt_token_ids": list(p) + list(c)}
                   for p, c in zip(prompt_ids, completion_ids, strict=True)]
        outs = self.llm.generate(prompts, sp, use_tqdm=False)
        return [[_logprob(o.prompt_logprobs[len(p) + t], tok) for t, tok in enumerate(c)]
                for o, p, c in zip(outs, prompt_ids, completion_ids)]

    def reload(self, weights_dir):
        """In-place weight update from DIR (config.json + *.safetensors); returns seconds. The
        prefix cache is reset after it: cached KV blocks were computed with the old weights."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(weights_dir)})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0


def _logprob(position, token):
    """The log-prob of `token` in one position's {token_id: Logprob} mapping."""
    return float(position[token].logprob)


def _sample(completion):
    toks = list(completion.token_ids)
    lps = [_logprob(pos, tok) for pos, tok in zip(completion.logprobs, toks)]
    return {"token_ids": toks, "logprobs": lps, "finish_reason": completion.finish_reason}


def serve(conn, server):
    """Answers requests until `shutdown` or the client goes away."""
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return
        op = req.pop("op", None)
        if op == "shutdown":
            conn.send({"ok": True, "result": None})
            return
        handler = getattr(server, op, None) if op in ("info", "generate", "score", "reload") \
            else None
        try:
            if handler is None:
                raise ValueError(f"unknown op {op!r}: use info, generate, score, reload, shutdown")
            conn.send({"ok": True, "result": handler(**req)})
        except Exception as e:  # noqa: BLE001 - every failure goes back as one line
            conn.send({"ok": False, "error": one_line(e)})


def main(argv=None):
    args = parse_args(argv)
    authkey = bytes.fromhex(os.environ.pop("FP8BENCH_VLLM_AUTHKEY"))
    with Listener(args.socket, family="AF_UNIX", authkey=authkey) as listener:
        with listener.accept() as conn:
            try:
                llm = build_engine(args)
                server = Server(llm, args)
                conn.send({"ok": True, "result": server.info()})
            except Exception as e:  # noqa: BLE001 - start-up failures go back as one line
                conn.send({"ok": False, "error": one_line(e)})
                return 1
            serve(conn, server)
    llm.llm_engine.engine_core.shutdown()
    return 0


if __name__ == "__main__":  # vLLM spawns its engine core: the guard keeps it from re-running this
    sys.exit(main())
