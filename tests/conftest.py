"""Test-wide setup: 8 simulated CPU devices, so the data-parallel path is tested here.

Must run before JAX initializes its backend (pytest imports conftest.py first). Tests
that do not ask for a mesh still run on the default (first) device.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
