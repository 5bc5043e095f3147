"""A CPU render reuses the memory of the item before it instead of faulting it in afresh
(sda.host_memory): with glibc's default thresholds every 2 s item took about 13,000 minor page
faults, every one of them again after the first."""

from __future__ import annotations

import platform
import resource

import pytest

from sda.config import GenerationConfig, PhaseConfig
from sda.pipeline import GenerationPipeline


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="not glibc: the C library keeps its own policy")
def test_a_cpu_render_reuses_the_memory_of_the_item_before(shipped):
    pipeline = GenerationPipeline(shipped, GenerationConfig(duration_s=2.0, device="cpu", phase=PhaseConfig()))
    faults = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        (result,) = pipeline.generate([3])
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        assert result.audio.shape == (1, 2 * 48000)
    assert max(faults[2:]) < 1000, f"minor page faults per render: {faults}"
