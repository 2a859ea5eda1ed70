"""Build step: compile the parent Rust crate and bundle libeploop.so into the package.

`pip install ./python-bindings` and `pip wheel ./python-bindings` run `cargo build --release`
on ../Cargo.toml and copy the resulting cdylib next to eploop/__init__.py. The wheel is
tagged py3-none-<platform>: it holds native code but does not depend on the Python ABI.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
CRATE_MANIFEST = HERE.parent / "Cargo.toml"
# Build byproducts go under the crate's target/, not into the source tree.
BUILD_DIR = HERE.parent / "target" / "python-build"
LIBRARY_NAME = "libeploop.so"


def build_library() -> Path:
    """Run cargo and return the path of the cdylib it produced."""
    if not CRATE_MANIFEST.is_file():
        sys.exit(
            f"eploop: cannot build {LIBRARY_NAME}: no Rust crate at {CRATE_MANIFEST} "
            "(build from the eploop source tree: pip install ./python-bindings)"
        )
    cargo = os.environ.get("CARGO", "cargo")
    command = [
        cargo,
        "build",
        "--release",
        "--lib",
        "--manifest-path",
        str(CRATE_MANIFEST),
        "--message-format=json-render-diagnostics",
    ]
    print("eploop:", " ".join(command), file=sys.stderr)
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, check=True, text=True)
    except FileNotFoundError:
        sys.exit(
            f"eploop: `{cargo}` not found: the Rust toolchain is needed to build {LIBRARY_NAME}"
        )
    except subprocess.CalledProcessError as exc:
        sys.exit(f"eploop: cargo build failed (exit {exc.returncode})")
    for line in result.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact" or message["target"]["name"] != "eploop":
            continue
        for filename in message.get("filenames", []):
            if filename.endswith(LIBRARY_NAME):
                return Path(filename)
    sys.exit(f"eploop: cargo build succeeded but reported no {LIBRARY_NAME}")


class BuildPyWithLibrary(build_py):
    def run(self) -> None:
        shutil.rmtree(Path(self.build_lib) / "eploop", ignore_errors=True)  # no stale files
        super().run()
        target = Path(self.build_lib) / "eploop" / LIBRARY_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_library(), target)


class BinaryDistribution(Distribution):
    """Holds native code: the wheel is platform-specific and installs into platlib."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """Tagged py3-none-<platform>: the library does not depend on the Python ABI."""

    def get_tag(self) -> tuple[str, str, str]:
        _python, _abi, platform = super().get_tag()
        return "py3", "none", platform


BUILD_DIR.mkdir(parents=True, exist_ok=True)
setup(
    distclass=BinaryDistribution,
    cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel},
    options={"build": {"build_base": str(BUILD_DIR)}, "egg_info": {"egg_base": str(BUILD_DIR)}},
)
