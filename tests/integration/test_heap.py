"""The allocator policies in fedn.heap, each in a fresh interpreter: they are process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="the policies are glibc's"
)

_FAULTS_OF_A_REUSED_BUFFER = """
import resource, sys
from fedn import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
def fill():
    buf = bytearray(40 << 20)  # zero-filled: every page is touched
    del buf
fill()  # the first is always fresh memory
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_of_second_buffer(policy: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_OF_A_REUSED_BUFFER, policy],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},  # glibc's own knobs
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_keep_freed_memory_reuses_a_freed_buffer_without_page_faults():
    # 40 MiB is over glibc's largest mmap threshold: by default each such buffer is mapped fresh and
    # every one of its 10240 pages faults in again.
    assert _faults_of_second_buffer("default") > 5000
    assert _faults_of_second_buffer("keep") < 500


def test_limit_arenas_ignores_zero():
    from fedn import heap

    assert heap.limit_arenas(0) is False  # 0 leaves the C library's choice: nothing is called
