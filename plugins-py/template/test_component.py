"""The component: built with componentize-py (requirements.txt) into
dist/template.wasm, then cases.toml run against it on the sidecar's own
policy host (`sidecar policy test dist/template.wasm cases.toml`).

The sidecar: $SIDECAR, else the one that created this project, else
`sidecar` on the PATH.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
POLICY = "template"
WASM = os.path.join("dist", f"{POLICY}.wasm")

# The sidecar that ran `sidecar policy new` (absolute), if known.
GENERATED_BY = None


def sidecar():
    if os.environ.get("SIDECAR"):
        return os.environ["SIDECAR"]
    if GENERATED_BY and os.path.exists(GENERATED_BY):
        return GENERATED_BY
    found = shutil.which("sidecar")
    if not found:
        raise AssertionError("no sidecar binary: set SIDECAR to its path")
    return found


def build():
    """Builds dist/<policy>.wasm from the modules that are not tests, with
    the componentize-py beside this interpreter (a venv's), else on PATH."""
    tool = os.path.join(os.path.dirname(sys.executable), "componentize-py")
    if not os.path.exists(tool):
        tool = shutil.which("componentize-py")
    if not tool:
        raise AssertionError(
            "componentize-py not found: pip install -r requirements.txt (in a venv)"
        )
    with tempfile.TemporaryDirectory() as stage:
        # componentize-py bundles the folder it is given: only the policy's
        # modules go in, never tests, caches or a venv.
        for name in os.listdir(HERE):
            if name.endswith(".py") and not name.startswith("test_"):
                shutil.copy2(os.path.join(HERE, name), stage)
        os.makedirs(os.path.join(HERE, "dist"), exist_ok=True)
        # Without VIRTUAL_ENV, an activated venv's packages stay out of it.
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        out = os.path.join(HERE, WASM)
        subprocess.run(
            [tool, "-d", "wit", "-w", "policy", "componentize", "-p", stage, "-o", out, "app"],
            cwd=HERE,
            env=env,
            check=True,
        )


class ComponentTest(unittest.TestCase):
    def test_cases_pass_on_the_sidecar(self):
        build()
        run = subprocess.run(
            [sidecar(), "policy", "test", WASM, "cases.toml"],
            cwd=HERE,
            capture_output=True,
            text=True,
        )
        print(run.stdout + run.stderr, file=sys.stderr)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)


if __name__ == "__main__":
    unittest.main()
