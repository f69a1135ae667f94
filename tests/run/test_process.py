"""The process settings are accepted (in a process of their own)."""

import subprocess
import sys


def test_settings_are_accepted():
    code = ("import gc; from factrace.run.process import GC_THRESHOLDS, keep_freed_memory, "
            "tune_process; print(keep_freed_memory()); tune_process(); "
            "print(gc.get_threshold() == GC_THRESHOLDS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    glibc = "True" if sys.platform.startswith("linux") else "False"
    assert out.stdout.split() == [glibc, "True"]
