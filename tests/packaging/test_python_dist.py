"""The Python distributions install by name, as a user gets them: `make sdist wheel` builds the
sdist (the crate inside) and the manylinux wheel (stripped library); each is installed into a
fresh venv, from another directory, and an echo round trip on loopback runs with it. The sdist
builds with nothing but the Rust toolchain and writes nothing outside its own directory."""

import os
import pathlib
import subprocess
import sys
import tarfile
import venv
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIST = ROOT / "target" / "dist"
VERSION = next(
    line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines() if line.startswith("version = ")
)

SMOKE = r"""
import pathlib, socket, threading
import eploop
package = pathlib.Path(eploop.__file__).parent
assert pathlib.Path(eploop.library_path).parent == package, eploop.library_path
class Echo(eploop.Handler):
    def on_data(self, data):
        self.conn.send(data)
with eploop.Loop() as loop:
    port = loop.listen(("127.0.0.1", 0), Echo).port
    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"dist\x00echo")
            got = b""
            while len(got) < 9:
                got += s.recv(100)
            print("echo", got)
        loop.call_soon_threadsafe(loop.stop)
    threading.Thread(target=client).start()
    loop.run()
print("versions", eploop.__version__, eploop.library_version)
"""


def run(cmd, timeout=300, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist():
    run(["make", "-C", str(ROOT), "sdist", "wheel"], timeout=600)
    (sdist,) = DIST.glob("eploop-*.tar.gz")
    (wheel,) = DIST.glob("eploop-*.whl")
    return sdist, wheel


def fresh_venv(path):
    venv.create(path, with_pip=True)
    return str(path / "bin" / "python")


def echo_round_trip(python, cwd, env):
    result = run([python, "-c", SMOKE], timeout=60, cwd=cwd, env=env)
    assert "echo b'dist\\x00echo'" in result.stdout
    assert f"versions {VERSION} {VERSION}" in result.stdout


def test_the_wheel_is_manylinux_stripped_and_installs_without_rust(dist, tmp_path):
    _sdist, wheel = dist
    assert wheel.name == f"eploop-{VERSION}-py3-none-manylinux_2_34_x86_64.whl", wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "eploop/libeploop.so" in names and "eploop/py.typed" in names
        library = tmp_path / "libeploop.so"
        library.write_bytes(zf.read("eploop/libeploop.so"))
    assert library.stat().st_size < 1_000_000, library.stat().st_size  # unstripped: ~4.9 MB
    sections = run(["readelf", "-S", "-W", str(library)]).stdout
    assert ".symtab" not in sections and ".debug_info" not in sections
    soname = run(["readelf", "-d", str(library)]).stdout
    assert "Library soname: [libeploop.so.0]" in soname

    python = fresh_venv(tmp_path / "venv")
    run([python, "-m", "pip", "install", "-q", "--no-index", str(wheel)], cwd=tmp_path)
    # No cargo, no checkout on the path: the wheel alone.
    echo_round_trip(python, tmp_path, {"PATH": f"{tmp_path / 'venv' / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})


def test_the_sdist_holds_the_crate_builds_in_place_and_installs(dist, tmp_path):
    sdist, _wheel = dist
    with tarfile.open(sdist) as tf:
        names = set(tf.getnames())
        top = f"eploop-{VERSION}"
        for needed in ["Cargo.toml", "Cargo.lock", "build.rs", "src/lib.rs", "include/eploop.h"]:
            assert f"{top}/crate/{needed}" in names, needed
        assert not [n for n in names if "/bench/" in n or n.endswith((".png", ".whl", ".so"))]
        unpacked = tmp_path / "unpacked"
        tf.extractall(unpacked)
    source = unpacked / top
    before = {p for p in unpacked.rglob("*")}

    python = fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO_TARGET_DIR", "PYTHON", "VIRTUAL_ENV"))}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run([python, "-m", "pip", "install", "-q", str(source)], timeout=900, cwd=elsewhere, env=env)

    written = {p for p in unpacked.rglob("*")} - before
    outside = sorted(str(p.relative_to(unpacked)) for p in written if not p.is_relative_to(source / "build"))
    assert outside == [], outside  # it used to write ../target/python-build
    assert (source / "build" / "cargo").is_dir()  # cargo's target directory, inside the build dir
    assert list(elsewhere.iterdir()) == []

    echo_round_trip(python, elsewhere, {"PATH": f"{tmp_path / 'venv' / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})


def test_the_declared_python_range_is_what_ci_runs(dist):
    sdist, _wheel = dist
    with tarfile.open(sdist) as tf:
        pkg_info = tf.extractfile(f"eploop-{VERSION}/PKG-INFO").read().decode()
    assert "Requires-Python: >=3.9" in pkg_info
    claimed = sorted(
        line.rsplit(":: ", 1)[1]
        for line in pkg_info.splitlines()
        if line.startswith("Classifier: Programming Language :: Python :: 3.")
    )
    assert claimed == ["3.10", "3.11", "3.12", "3.13", "3.9"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "oldest=3.9" in ci and "newest=3.13" in ci
    assert sys.version_info >= (3, 9)
