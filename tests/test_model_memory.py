"""Bounded memory per request: scoring the longest allowed text (2,048 tokens), its summary (all
token statistics and ranks) and its attention entropy stay under ``REQUEST_MEMORY_BYTES`` of peak RSS above
the idle process (measured in a fresh subprocess with Linux's resettable peak, VmHWM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.model,
              pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                                 reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")]
ROOT = Path(__file__).resolve().parents[1]

REQUEST = textwrap.dedent("""
    import gc, json, re
    import torch
    from explorer.models.language_model import REQUEST_MEMORY_BYTES, load_language_model

    def status(field):
        return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    lm = load_language_model()
    warm = lm.score("Warm up every code path once. " * 8)
    warm.summary(), lm.attention_entropy(warm)
    del warm
    gc.collect()
    ids = lm.encode("The river froze overnight, and the town woke to silence. " * 300)[:lm.max_tokens]
    text = lm.tokenizer.decode(ids)
    open("/proc/self/clear_refs", "w").write("5")   # the peak (VmHWM) restarts from the current RSS
    idle = status("VmRSS")
    trace = lm.score(text)
    summary = trace.summary()
    attention = lm.attention_entropy(trace)
    peak = status("VmHWM")
    print(json.dumps({"tokens": len(trace) + len(trace.context_ids), "limit": lm.max_tokens,
                      "above_idle": peak - idle, "ceiling": REQUEST_MEMORY_BYTES,
                      "attention_shape": list(attention.shape), "finite": bool(torch.isfinite(attention).all())}))
""")


def test_longest_request_stays_under_the_memory_ceiling():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", REQUEST], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["limit"] == 2048 and result["tokens"] == 2048
    assert result["attention_shape"] == [30, 9, 2047] and result["finite"]
    assert result["above_idle"] < result["ceiling"], \
        f"peak {result['above_idle'] / 2**30:.2f} GiB above idle, ceiling {result['ceiling'] / 2**30:.2f} GiB"
