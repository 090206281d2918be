#!/usr/bin/env python3
"""The same N x K work as `driftwatch bench`, sent to an OpenAI-compatible server.

Drives a running llama-server (or any server with /v1/chat/completions) with the prompts that
`driftwatch bench` uses (config/bench_prompts.txt, cycled and numbered the same way), K seeded
samples per prompt, CONCURRENCY requests in flight, and driftwatch's default sampling settings.
Prints one JSON object: wall seconds, requests, prompt and completion tokens, tokens/s.

    scripts/server-bench.py --url http://127.0.0.1:8080 --prompts 16 --samples 4 \
        --concurrency 16 --max-tokens 128 [--ignore-eos] [--prompt-file F]
"""
import argparse
import concurrent.futures
import json
import pathlib
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent


def prompts(n, path=None):
    """driftwatch bench's prompts (its --prompt-file, else config/bench_prompts.txt): the list
    cycled, repeats numbered so every prompt differs."""
    base = [l.strip() for l in pathlib.Path(path or ROOT / "config/bench_prompts.txt").read_text().splitlines()]
    base = [l for l in base if l]
    return [base[i % len(base)] if i < len(base) else f"{base[i % len(base)]} (variant {i // len(base)})" for i in range(n)]


def one(url, prompt, seed, max_tokens, ignore_eos):
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "seed": seed,
        "max_tokens": max_tokens,
        # driftwatch's defaults (engine/sampling.rs).
        "temperature": 0.7, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
        "repeat_penalty": 1.1, "repeat_last_n": 64,
        "ignore_eos": ignore_eos,
        "stream": False,
    }
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        v = json.load(r)
    u = v.get("usage") or {}
    return int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--prompt-file", help="one prompt a line, as driftwatch bench --prompt-file")
    a = ap.parse_args()
    jobs = [(p, 1000 * i + k) for i, p in enumerate(prompts(a.prompts, a.prompt_file)) for k in range(a.samples)]
    t0 = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(a.concurrency) as pool:
            done = list(pool.map(lambda j: one(a.url, j[0], j[1], a.max_tokens, a.ignore_eos), jobs))
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"server-bench: a request to {a.url} failed: {e}", file=sys.stderr)
        sys.exit(1)
    wall = time.monotonic() - t0
    pt = sum(d[0] for d in done)
    ct = sum(d[1] for d in done)
    print(json.dumps({
        "url": a.url, "requests": len(jobs), "concurrency": a.concurrency, "max_tokens": a.max_tokens,
        "ignore_eos": a.ignore_eos, "wall_s": wall, "prompt_tokens": pt, "completion_tokens": ct,
        "completion_tokens_per_s": ct / wall,
    }))


if __name__ == "__main__":
    main()
