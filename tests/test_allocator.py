"""pensu.allocator: glibc's thresholds raised for swapping, unless the operator set them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pensu import allocator


def test_thresholds_are_raised_on_glibc() -> None:
    code = textwrap.dedent("""
        import ctypes, ctypes.util, json
        from pensu.allocator import keep_large_buffers
        done = keep_large_buffers({})
        # M_MMAP_THRESHOLD is observable: a 4 MB block now comes from the heap, not its own mapping
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc.restype = ctypes.c_void_p
        block = libc.malloc(4 * 1024 * 1024)
        maps = open("/proc/self/maps").read()
        heap = [line for line in maps.splitlines() if line.endswith("[heap]")]
        lo, hi = (int(x, 16) for x in heap[0].split()[0].split("-"))
        print(json.dumps({"done": done, "in_heap": lo <= block < hi}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if '"done": false' in out.stdout:
        pytest.skip("this C library has no mallopt")
    assert out.stdout.strip() == '{"done": true, "in_heap": true}'


def test_operator_variables_win() -> None:
    assert allocator.keep_large_buffers({"MALLOC_ARENA_MAX": "2"}) is False


def test_no_mallopt_means_nothing_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_mallopt", lambda: None)
    assert allocator.keep_large_buffers({}) is False
