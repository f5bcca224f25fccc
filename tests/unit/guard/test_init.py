import inspect
import subprocess
import sys

import glimpse.guard


def test_exports_match_all():
    public = {
        name
        for name, value in vars(glimpse.guard).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(glimpse.guard.__all__) == public


def test_guard_is_framework_free():
    code = (
        "import sys, glimpse.guard, glimpse.guard.evaluate, glimpse.guard.keys;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')"
        " or m.startswith(('glimpse.api', 'glimpse.engine'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
