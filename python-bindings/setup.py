"""Build step: compile the Rust crate and bundle a stripped libeploop.so into the package.

The crate is ../ in a checkout and crate/ in an sdist (the sdist command copies there the files
`cargo package --list` names), so `pip install eploop-X.tar.gz` builds anywhere with a Rust
toolchain. Everything the build writes stays under build/ beside this file: cargo's target
directory is build/cargo (shared by every interpreter: the library does not depend on it), unless CARGO_TARGET_DIR says otherwise (`make test-python` points it
at the checkout's target/ to reuse the library `make lib` built).

The wheel is tagged py3-none-<platform>: it holds native code but does not depend on the Python
ABI. `make wheel` retags it manylinux with auditwheel (see "Install" in the top-level README).

setuptools-rust was considered: its Binding.NoBinding names the library after the interpreter
(libeploop.cpython-311-x86_64-linux-gnu.so) and tags the wheel per interpreter, and it does not
bring a crate from outside this directory into the sdist, which is most of what this file does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
BUILD_BASE = "build"  # relative to HERE, where pip runs this file
LIBRARY_NAME = "libeploop.so"
# Where the crate travels inside the sdist.
SDIST_CRATE = "crate"


def crate_dir() -> Path:
    """The crate: bundled in an sdist, else the checkout this package lives in."""
    for candidate in (HERE / SDIST_CRATE, HERE.parent):
        if (candidate / "Cargo.toml").is_file() and (candidate / "src" / "lib.rs").is_file():
            return candidate
    sys.exit(
        f"eploop: cannot build {LIBRARY_NAME}: no Rust crate in {HERE / SDIST_CRATE} nor "
        f"{HERE.parent} (install from the eploop sdist or a checkout)"
    )


def cargo_command() -> str:
    cargo = os.environ.get("CARGO", "cargo")
    if shutil.which(cargo) is None:
        sys.exit(
            f"eploop: `{cargo}` not found: building {LIBRARY_NAME} needs the Rust toolchain "
            "(https://rustup.rs), or install a wheel"
        )
    return cargo


def build_library(target_dir: Path) -> Path:
    """Run cargo and return the path of the cdylib it produced."""
    command = [
        cargo_command(),
        "build",
        "--release",
        "--lib",
        "--locked",
        "--manifest-path",
        str(crate_dir() / "Cargo.toml"),
        "--message-format=json-render-diagnostics",
    ]
    if "CARGO_TARGET_DIR" not in os.environ:
        command += ["--target-dir", str(target_dir)]
    print("eploop:", " ".join(command), file=sys.stderr)
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, check=True, text=True)
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


def strip_library(path: Path) -> None:
    """Drop the symbol table and debug info: about 0.4 MB instead of 4.9 MB. The release profile
    keeps line tables for `make install` users' backtraces; a wheel has no use for them."""
    strip = shutil.which(os.environ.get("STRIP", "strip"))
    if strip is None:
        print(f"eploop: warning: no `strip`; {LIBRARY_NAME} keeps its debug info", file=sys.stderr)
        return
    subprocess.run([strip, "--strip-unneeded", str(path)], check=True)


class BuildPyWithLibrary(build_py):
    def run(self) -> None:
        shutil.rmtree(Path(self.build_lib) / "eploop", ignore_errors=True)  # no stale files
        super().run()
        target = Path(self.build_lib) / "eploop" / LIBRARY_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        build_base = Path(self.get_finalized_command("build").build_base)
        shutil.copyfile(build_library(build_base.resolve() / "cargo"), target)
        target.chmod(0o755)
        strip_library(target)


class SdistWithCrate(sdist):
    """Puts the crate (as `cargo package` would ship it) under crate/ in the sdist."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        source = crate_dir()
        listed = subprocess.run(
            [cargo_command(), "package", "--list", "--allow-dirty", "--locked"],
            cwd=source,
            stdout=subprocess.PIPE,
            check=True,
            text=True,
        ).stdout.split()
        for name in listed:
            path = source / name
            if not path.is_file():  # Cargo.toml.orig, .cargo_vcs_info.json: made by cargo package
                continue
            dest = Path(base_dir) / SDIST_CRATE / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)


class BinaryDistribution(Distribution):
    """Holds native code: the wheel is platform-specific and installs into platlib."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """Tagged py3-none-<platform>: the library does not depend on the Python ABI."""

    def get_tag(self) -> tuple[str, str, str]:
        _python, _abi, platform = super().get_tag()
        return "py3", "none", platform


(HERE / BUILD_BASE).mkdir(exist_ok=True)
setup(
    distclass=BinaryDistribution,
    cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel, "sdist": SdistWithCrate},
    options={"build": {"build_base": BUILD_BASE}, "egg_info": {"egg_base": BUILD_BASE}},
)
