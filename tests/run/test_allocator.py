"""The allocator settings are accepted by glibc (in a process of their own)."""

import subprocess
import sys


def test_glibc_accepts_the_settings():
    code = "from factrace.run.allocator import keep_freed_memory as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("True" if sys.platform.startswith("linux") else "False")
