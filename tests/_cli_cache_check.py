"""Run by tests/test_cli.py (in the background, tests/_background.py): the
CLI's persistent compilation cache over five runs of ``hessian-tools
analyze`` on the toy saddle. Prints JSON: each run's exit status, the cache
entries after the first and second runs, and the stderr the test reads.

Usage: python _cli_cache_check.py OUT_FOLDER
"""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOY = f"{HERE / 'analyze_targets.py'}:toy_saddle"
OPTIONS = ["--x64", "--grid", "9", "--trace-matvecs", "8"]  # as test_cli.py's


# every program cached, however fast it compiled: which programs cross the
# CLI's 0.1 s threshold depends on the machine's load, and a second run
# would then add entries that the first had compiled too fast to keep
ENV = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def cli(*args, timeout=180):
    cmd = [sys.executable, "-m", "hessian_tools", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def main(out: Path) -> dict:
    cache = out / "cache"
    argv = ["analyze", TOY, "--parts", "point,trace", "--quiet", *OPTIONS]
    first = cli(*argv, "--out", str(out / "a"), "--compile-cache", str(cache))
    entries = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    second = cli(*argv, "--out", str(out / "b"), "--compile-cache", str(cache))
    after = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    off = cli(*argv, "--out", str(out / "c"), "--no-compile-cache")
    blocked = out / "file"
    blocked.write_text("")  # a file where the folder should be: not writable as a folder
    warned = cli(*argv, "--out", str(out / "d"), "--compile-cache", str(blocked / "x"))
    both = cli("analyze", TOY, "--compile-cache", "x", "--no-compile-cache", timeout=60)
    runs = {"first": first, "second": second, "off": off, "warned": warned, "both": both}
    return {
        "status": {k: r.returncode for k, r in runs.items()},
        "stderr": {k: r.stderr[-3000:] for k, r in runs.items()},
        "entries": entries,
        "after": after,
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
