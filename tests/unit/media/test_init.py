import subprocess
import sys

import glimpse.media


def test_all_matches_the_public_names():
    public = {name for name in dir(glimpse.media) if not name.startswith("_")}
    modules = {
        "addresses",
        "budget",
        "colour",
        "decode",
        "encoding",
        "fetch",
        "intake",
        "memory",
        "sniff",
        "threads",
    }
    assert set(glimpse.media.__all__) == public - modules


def test_media_does_not_import_the_engine_or_a_web_framework():
    code = (
        "import sys, glimpse.media; "
        "bad = sorted(m for m in sys.modules if m.startswith(('glimpse.engine', 'glimpse.api', 'fastapi', "
        "'starlette'))); print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
