"""`pip wheel ./python-bindings` gives a platform wheel that bundles libeploop.so and works in a
fresh virtual environment elsewhere, with no Rust toolchain and no environment variable."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile

from bindings_support import BINDINGS

import eploop

SMOKE = """
import pathlib, socket, sys, threading
import eploop
package = pathlib.Path(eploop.__file__).parent
assert pathlib.Path(eploop.library_path).is_relative_to(package), eploop.library_path
class Echo(eploop.Handler):
    def on_data(self, data):
        self.conn.send(data)
with eploop.Loop() as loop:
    port = loop.listen(("127.0.0.1", 0), Echo).port
    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"wheel\\x00")
            print("echo", s.recv(100))
        loop.call_soon_threadsafe(loop.stop)
    threading.Thread(target=client).start()
    loop.run()
print("versions", eploop.__version__, eploop.library_version)
"""


def test_the_wheel_is_platform_tagged_bundles_the_library_and_installs_elsewhere(tmp_path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(BINDINGS), "-w", str(wheels)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheel,) = wheels.glob("eploop-*.whl")
    assert wheel.name.endswith("-py3-none-linux_x86_64.whl") or "-py3-none-linux_" in wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert "eploop/libeploop.so" in names and "eploop/py.typed" in names

    env_dir = tmp_path / "fresh-venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-index", str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    clean_env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}  # no cargo
    result = subprocess.run(
        [python, "-c", SMOKE],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "echo b'wheel\\x00'" in result.stdout
    assert f"versions {eploop.__version__} {eploop.__version__}" in result.stdout
