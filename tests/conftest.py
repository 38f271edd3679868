import os
import sys

# pytest-xdist runs two workers on two cores: one XLA thread each, rather than both oversubscribing.
# The tests' programs are small and compiled once each, so compiling dominates: LLVM's optimisation
# level 0 compiles them about 25% faster. Roundings may differ by an ulp or a few; every
# comparison has a tolerance, and the README's generated tables are checked at the default level
# (assert_readme_section_is_current). Benchmarks and examples run at the default level.
TEST_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)

import jax
from hypothesis import HealthCheck, settings

# The catalog tests run every rule in float64 (and finite differences need it); float32 and the
# low-precision dtypes are requested explicitly by each test.
jax.config.update("jax_enable_x64", True)

sys.path.insert(0, os.path.dirname(__file__))  # tests/strategies.py

# Property tests: a small deterministic budget in CI; `--hypothesis-profile=thorough` for 50 examples
# per rule and dtype (every example compiles its own shapes, about 0.1-0.5 s each).
_slow = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=2, derandomize=True, deadline=None, database=None,
                          suppress_health_check=_slow, print_blob=True)
settings.register_profile("thorough", max_examples=50, deadline=None, suppress_health_check=_slow, print_blob=True)
settings.load_profile("ci")


def assert_readme_section_is_current(tmp_path, module: str) -> None:
    """``python -m module --write`` on a copy of the README, at XLA's default flags, changes nothing."""
    import pathlib
    import subprocess
    readme = pathlib.Path(__file__).parent.parent / "README.md"
    copy = tmp_path / "README.md"
    copy.write_text(readme.read_text(encoding="utf-8"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "-m", module, "--write", str(copy)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert copy.read_text(encoding="utf-8") == readme.read_text(encoding="utf-8"), \
        f"README.md is stale: run python -m {module} --write README.md"
