"""The allocator setting for CPU training: the buffers a training step frees are reused, not faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

STEPS = 10  # timed training steps, after 3 warm-up steps
BUFFER_PAGES = 9400  # 4 KiB pages of one step's largest activation (64 x 64 x 48 x 48 floats, 36 MiB)
SCRIPT = textwrap.dedent(f"""
    import resource, torch
    from glasszoo.training.allocator import keep_freed_memory
    applied = keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 2))
    x, y = torch.rand(64, 1, 48, 48), torch.randint(0, 2, (64,))
    opt = torch.optim.SGD(net.parameters(), 0.01)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({STEPS}):
        step()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(tuning: str) -> tuple[bool, int]:
    env = {**os.environ, "GLASSZOO_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_the_steps_buffers_are_reused_instead_of_faulted_in_again():
    """A step's activations (64 x 64 x 48 x 48 floats: 36 MiB, above glibc's largest dynamic mmap threshold) are
    mapped and unmapped every step by default, so every page faults in again: each step faults several times the
    ~9,400 pages of that one buffer. With the setting the heap keeps them: what faults then does not grow with the
    steps (seen here over 10 steps: 0, 19, 4,608 or 18,433 pages, a one-time growth of the heap, against 460,000 to
    760,000 by default), so it stays below half a buffer per step."""
    off_applied, off = _faults("0")
    on_applied, on = _faults("1")
    assert (off_applied, on_applied) == (False, True)
    assert off > STEPS * BUFFER_PAGES  # at least one buffer faulted in again per step
    assert on < STEPS * BUFFER_PAGES / 2, (on, off)
