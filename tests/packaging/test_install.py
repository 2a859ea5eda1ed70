"""The installed library works for a C programmer who only has pkg-config: `make install` into a
temporary prefix with a lib64 layout, then build and run a program with nothing but pkg-config's
flags (no path into the source tree): dynamically, with the static library, and fully static
(`gcc -static`); check the soname, and that uninstall removes every layout's files."""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = next(
    line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines() if line.startswith("version = ")
)
MAJOR = VERSION.split(".")[0]

# Connects to itself through the loop: proves header, symbols and runtime loading all agree.
PROGRAM = r"""
#include <eploop.h>
#include <stdio.h>
#include <string.h>

static int replies;
static void on_accept(ep_loop *lp, ep_id listener, ep_id conn, void *user) {
    (void)user;
    if (listener == 0) ep_send(lp, conn, "ping", 4);   /* our outbound connection is up */
}
static void on_data(ep_loop *lp, ep_id conn, const uint8_t *data, size_t len, void *user) {
    (void)user;
    if (len == 4 && memcmp(data, "ping", 4) == 0) ep_send(lp, conn, "pong", 4);
    else if (len == 4 && memcmp(data, "pong", 4) == 0) { replies++; ep_stop(lp); }
}
int main(void) {
    if (strcmp(ep_version(), EP_VERSION_STRING) != 0) { puts("version mismatch"); return 2; }
    ep_loop *lp = ep_loop_new();
    ep_callbacks cbs = { on_accept, on_data, NULL, NULL };
    int64_t listener = ep_listen(lp, "127.0.0.1", 0, 16, 0, &cbs, NULL);
    if (listener < 0) { printf("listen: %s\n", ep_strerror((int)listener)); return 3; }
    int64_t conn = ep_connect(lp, "127.0.0.1", (uint16_t)ep_local_port(lp, (ep_id)listener), 2000, 0, &cbs, NULL);
    if (conn < 0) { printf("connect: %s\n", ep_strerror((int)conn)); return 4; }
    ep_run(lp);
    ep_loop_free(lp);
    printf("version %s replies %d\n", ep_version(), replies);
    return replies == 1 ? 0 : 1;
}
"""


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    if shutil.which("pkg-config") is None:
        pytest.fail("pkg-config is required (CI installs it)")
    prefix = tmp_path_factory.mktemp("prefix")
    # The lib64 layout (Fedora, openSUSE): everything must follow LIBDIR, the .pc file included.
    run(["make", "-C", str(ROOT), "install", f"PREFIX={prefix}", "LIBDIR=lib64"])
    return prefix


def pkg_config(prefix, *args):
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib64" / "pkgconfig"))
    return run(["pkg-config", *args, "eploop"], env=env).stdout.split()


def test_installed_files_and_soname(prefix):
    assert not (prefix / "lib").exists()
    lib = prefix / "lib64"
    assert (lib / f"libeploop.so.{VERSION}").is_file()
    assert os.readlink(lib / f"libeploop.so.{MAJOR}") == f"libeploop.so.{VERSION}"
    assert os.readlink(lib / "libeploop.so") == f"libeploop.so.{MAJOR}"
    assert (lib / "libeploop.a").is_file()
    assert (prefix / "include" / "eploop.h").read_bytes() == (ROOT / "include" / "eploop.h").read_bytes()
    dynamic = run(["readelf", "-d", str(lib / f"libeploop.so.{VERSION}")]).stdout
    assert f"Library soname: [libeploop.so.{MAJOR}]" in dynamic
    assert pkg_config(prefix, "--modversion") == [VERSION]
    manifest = (prefix / "share" / "eploop" / "install-manifest.txt").read_text().split()
    assert all(pathlib.Path(p).exists() or pathlib.Path(p).is_symlink() for p in manifest)


def test_program_built_with_pkg_config_only(prefix, tmp_path):
    source = tmp_path / "app.c"
    source.write_text(PROGRAM)
    exe = tmp_path / "app"
    flags = pkg_config(prefix, "--cflags", "--libs")
    run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", str(source), "-o", str(exe), *flags], cwd=tmp_path)
    needed = run(["readelf", "-d", str(exe)]).stdout
    assert f"Shared library: [libeploop.so.{MAJOR}]" in needed
    assert f"-L{prefix}/lib64" in flags
    out = run([str(exe)], env=dict(os.environ, LD_LIBRARY_PATH=str(prefix / "lib64")), cwd=tmp_path).stdout
    assert out.strip() == f"version {VERSION} replies 1"


def test_static_library_links_with_libs_private(prefix, tmp_path):
    source = tmp_path / "app.c"
    source.write_text(PROGRAM)
    exe = tmp_path / "app_static"
    cflags = pkg_config(prefix, "--cflags")
    libs = pkg_config(prefix, "--static", "--libs")
    # Prefer the archive over the shared object for -leploop only.
    libs = [("-Wl,-Bstatic", "-leploop", "-Wl,-Bdynamic") if f == "-leploop" else (f,) for f in libs]
    flat = [f for group in libs for f in group]
    run(["cc", "-std=c11", str(source), "-o", str(exe), *cflags, *flat], cwd=tmp_path)
    assert "libeploop" not in run(["readelf", "-d", str(exe)]).stdout
    out = run([str(exe)], cwd=tmp_path).stdout
    assert out.strip() == f"version {VERSION} replies 1"


def test_fully_static_program_with_pkg_config_static(prefix, tmp_path):
    """The command a user types: `gcc -static app.c $(pkg-config --static --libs eploop)`. It used to
    stop at `cannot find -lgcc_s` (libgcc_s has no static archive)."""
    source = tmp_path / "app.c"
    source.write_text(PROGRAM)
    exe = tmp_path / "app_fully_static"
    flags = pkg_config(prefix, "--cflags", "--static", "--libs")
    assert "-lgcc_s" not in flags
    run(["gcc", "-static", "-std=c11", str(source), "-o", str(exe), *flags], cwd=tmp_path)
    headers = run(["readelf", "-l", "-d", str(exe)]).stdout
    assert "INTERP" not in headers and "There is no dynamic section" in headers, headers
    out = run([str(exe)], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path).stdout
    assert out.strip() == f"version {VERSION} replies 1"


def test_libs_private_are_what_rustc_reports(prefix, tmp_path):
    """Libs.private is rustc's list of native libraries for a static link, less -lgcc_s: when a
    toolchain update changes that list, this fails instead of a user's link."""
    (tmp_path / "empty.rs").write_text("")
    note = run(
        ["rustc", "--crate-type", "staticlib", "--print", "native-static-libs", "empty.rs", "-o", "libempty.a"],
        cwd=tmp_path,
    ).stderr
    (line,) = [ln for ln in note.splitlines() if "native-static-libs:" in ln]
    reported = line.split("native-static-libs:", 1)[1].split()
    pc = (prefix / "lib64" / "pkgconfig" / "eploop.pc").read_text()
    (private,) = [ln.split(":", 1)[1].split() for ln in pc.splitlines() if ln.startswith("Libs.private:")]
    assert private == [f for f in reported if f != "-lgcc_s"]


@pytest.mark.parametrize("libdir", ["lib", "lib64", "lib/x86_64-linux-gnu"])
def test_uninstall_removes_everything(tmp_path, libdir):
    prefix = tmp_path / "p"
    run(["make", "-C", str(ROOT), "install", f"PREFIX={prefix}", f"LIBDIR={libdir}"])
    assert (prefix / libdir / "pkgconfig" / "eploop.pc").read_text().count(f"libdir=${{prefix}}/{libdir}\n") == 1
    run(["make", "-C", str(ROOT), "uninstall", f"PREFIX={prefix}"])
    left = [p for p in prefix.rglob("*") if p.is_file() or p.is_symlink()]
    assert left == []
