"""The crate's metadata tells the truth: `rust-version` is at least what every locked dependency
declares, the package has its repository and documentation links, and `cargo package` ships what
building needs and none of the benchmark results."""

import json
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]


def cargo(*args):
    return subprocess.run(
        ["cargo", *args], cwd=ROOT, check=True, capture_output=True, text=True, timeout=300
    ).stdout


def version_tuple(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def metadata():
    return json.loads(cargo("metadata", "--format-version", "1", "--locked"))


def test_rust_version_covers_every_locked_dependency():
    meta = metadata()
    (own,) = [p for p in meta["packages"] if p["id"] in meta["workspace_members"]]
    assert own["rust_version"], "Cargo.toml must declare rust-version"
    needed = {
        p["name"]: p["rust_version"]
        for p in meta["packages"]
        if p["id"] not in meta["workspace_members"] and p["rust_version"]
    }
    highest = max(needed.values(), key=version_tuple)
    assert version_tuple(own["rust_version"]) >= version_tuple(highest), (
        f"rust-version {own['rust_version']} is below {highest}, needed by "
        + ", ".join(sorted(n for n, v in needed.items() if v == highest))
    )


def test_links_for_the_registry_page():
    meta = metadata()
    (own,) = [p for p in meta["packages"] if p["id"] in meta["workspace_members"]]
    assert own["repository"] == "https://github.com/eploop/eploop"
    assert own["documentation"].startswith("https://")


def test_the_crate_package_ships_the_build_and_no_benchmark_results():
    files = set(cargo("package", "--list", "--allow-dirty", "--locked").split())
    for needed in ["Cargo.toml", "Cargo.lock", "build.rs", "src/lib.rs", "include/eploop.h", "README.md"]:
        assert needed in files, needed
    shipped_extras = sorted(f for f in files if f.startswith(("bench/", "python-bindings/", "tests/", ".ci/")))
    assert shipped_extras == []
    assert not [f for f in files if f.endswith((".png", ".svg", ".json")) and f != ".cargo_vcs_info.json"]
