"""Host memory: freed temporaries stay in the heap from one step to the next (glibc)."""
import os
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import resource
import numpy as np
from repro.engine.backend import select_backend
from repro.engine.hostmem import keep_freed_memory
select_backend("cpu")
def step():
    a = [np.ones(2 << 20, np.float32) for _ in range(3)]  # three 8 MiB temporaries, then freed
    del a
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(keep_freed_memory(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5)
"""


def _run(**env):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "REPRO_MALLOC"))}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=e, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_steps_reuse_freed_memory():
    """Choosing the backend keeps freed memory: a repeated step's 24 MiB of temporaries fault no
    pages back in (glibc's defaults trim them and fault them in again on this machine)."""
    applied, faults = _run()
    assert applied and faults < 50, faults


@pytest.mark.parametrize("env", [{"REPRO_MALLOC": "system"}, {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_user_malloc_settings_rule(env):
    applied, _ = _run(**env)
    assert not applied
