"""The package as pip installed it on this interpreter (CI runs this suite on 3.9, 3.11 and 3.13):
the library is inside the package and stripped, the wheel is tagged for any Python 3, and the
declared Python range covers this interpreter. The sdist and manylinux wheel themselves are built
and installed into fresh venvs by tests/packaging/test_python_dist.py."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import eploop


def installed() -> metadata.Distribution:
    dist = metadata.distribution("eploop")
    package = Path(eploop.__file__).resolve().parent
    assert package == Path(str(dist.locate_file("eploop"))).resolve(), (
        "the eploop imported is not the one pip installed (run the suite from the venv that "
        "`make test-python` installs into)"
    )
    return dist


def test_the_library_is_inside_the_package_and_stripped() -> None:
    installed()
    library = Path(eploop.library_path).resolve()
    assert library.parent == Path(eploop.__file__).resolve().parent, library
    assert library.stat().st_size < 1_000_000, library.stat().st_size  # unstripped: ~4.9 MB
    sections = subprocess.run(
        ["readelf", "-S", "-W", str(library)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert ".symtab" not in sections and ".debug_info" not in sections


def test_the_wheel_is_for_any_python3_and_the_range_covers_this_interpreter() -> None:
    dist = installed()
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(": ", 1)[1] for line in wheel.splitlines() if line.startswith("Tag: ")]
    assert tags and all(tag.startswith("py3-none-") for tag in tags), tags
    requires = dist.metadata["Requires-Python"]
    assert requires == ">=3.9", requires
    assert sys.version_info >= (3, 9)
    assert f"Programming Language :: Python :: {sys.version_info[0]}.{sys.version_info[1]}" in (
        dist.metadata.get_all("Classifier") or []
    )
    assert eploop.__version__ == dist.version == eploop.library_version
