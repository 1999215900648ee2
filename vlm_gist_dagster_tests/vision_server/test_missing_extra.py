"""Without the 'vision' extra, `vlm-gist vision-serve` says what to install (runs without torch too)."""

from __future__ import annotations

import subprocess
import sys

# torch and transformers made unimportable in the child, as on a base install
_WITHOUT_EXTRA = (
    "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
    "from vlm_gist_dagster.cli import main; "
    "sys.exit(main(['vision-serve', '--family', 'mmgroundingdino', '--flavor', 'large', '--random-weights']))"
)


def test_missing_extra_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRA], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert "needs the optional extra 'vision' (torch and transformers)" in result.stderr
    assert "pip install -e '.[vision]'" in result.stderr
    assert "missing: torch" in result.stderr and "transformers" in result.stderr


def test_help_works_without_the_extra() -> None:
    code = "import sys; sys.modules['torch'] = None; from vlm_gist_dagster.cli import main; main(['vision-serve', '--help'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "--random-weights" in result.stdout
