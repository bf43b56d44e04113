"""The wheel, installed non-editable into a fresh venv, is the whole project (issue 22).

Every install in development is editable, so a package missing from the wheel (pipeline.jobs once
was) goes unseen. Here the wheel is built offline from a copy of the checkout, installed with pip
--no-index into a fresh venv whose only view of the development venv is its third-party packages
(the editable install of the project filtered out), and run from a folder outside the checkout
with no PYTHONPATH: `taid compress-file` / `rehydrate-file` on a real image, and an import of every
module the wheel holds, each of which must come from the fresh venv.

Only the CLI and whole modules are used, never a name inside one: the layout inside pipeline/ moves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TREES = ("pipeline", "models", "flows")  # every file below these ships (code, weights, static files)
MODULES_ONLY = ("infra",)  # only the folder's own modules: its subfolders are scripts and configs
NOT_SHIPPED = ("tests", "benchmarks", "runs", "docs", "build")
# not copied for the build: at the root, what a checkout holds besides the project; anywhere, caches
SKIP_AT_ROOT = {".git", ".venv", "runs", "build", "dist", ".cache", ".gpu-carry", ".pytest_cache"}
PROJECT_DIST = "taid-archive"


@dataclass
class Installed:
    src: Path  # the copy the wheel was built from
    wheel: Path
    venv: Path
    site: Path  # the fresh venv's site-packages
    outside: Path  # a working folder outside the checkout


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _outside_env() -> dict:
    """The environment of a user's shell: no PYTHONPATH (nothing points at the checkout), no user
    site-packages, no TAID_* settings (the defaults are what is tested), one thread."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV") and not k.startswith("TAID_")}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _copy_ignore(folder: str, names: list[str]) -> set[str]:
    at_root = Path(folder).resolve() == ROOT
    return {n for n in names
            if (at_root and n in SKIP_AT_ROOT) or n == "__pycache__" or n.endswith((".pyc", ".egg-info"))}


def _is_project_install(entry: Path) -> bool:
    """Whether a site-packages entry is (part of) an install of this project: the editable install's
    .pth and finder, its dist-info / egg-info, a path .pth pointing at a checkout, or the packages."""
    name = entry.name.lower()
    if name.startswith(("__editable__", "_taid_archive", "taid_archive", "taid-archive")) or name == "__pycache__":
        return True
    if name in {*TREES, *MODULES_ONLY}:
        return True
    if name.endswith(".pth"):
        for line in entry.read_text(errors="replace").splitlines():
            line = line.strip()
            if "editable" in line or "taid" in line:
                return True
            if line and not line.startswith(("#", "import")) and (Path(line) / "pipeline").exists():
                return True
    return False


def _dependencies_view(dest: Path) -> Path:
    """The development venv's site-packages as symlinks, less the project's own install."""
    dest.mkdir()
    for site in dict.fromkeys(Path(sysconfig.get_path(k)) for k in ("purelib", "platlib")):
        for entry in sorted(site.iterdir()):
            if not _is_project_install(entry) and not (dest / entry.name).exists():
                (dest / entry.name).symlink_to(entry)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    # a copy: an in-tree build would write build/ and egg-info into the checkout (and race other runs)
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_copy_ignore, symlinks=True)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "--no-cache-dir", "-w", dist, src], cwd=tmp, env=_outside_env())
    (wheel,) = dist.glob("taid_archive-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp)  # pip comes from ensurepip, offline
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp).stdout.strip())
    # installed before the dependencies are visible: pip sees no other copy of the project
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-cache-dir", wheel],
         cwd=tmp, env=_outside_env())
    # then the third-party packages, after the venv's own site-packages (addsitedir appends and
    # reads the view's .pth files, none of which is the editable install's)
    deps = _dependencies_view(tmp / "deps")
    (site / "zz_development_dependencies.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    outside = tmp / "elsewhere"
    outside.mkdir()
    assert not outside.resolve().is_relative_to(ROOT)
    return Installed(src, wheel, venv, site, outside)


def _wheel_files(wheel: Path) -> set[str]:
    return {n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith("/")}


def _source_files(src: Path, top: str, recursive: bool = True) -> set[str]:
    pattern = "**/*" if recursive else "*"
    return {p.relative_to(src).as_posix() for p in (src / top).glob(pattern)
            if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".") and p.suffix != ".pyc"}


def _modules(files: set[str]) -> list[str]:
    """Dotted names of every module and package in the wheel (pipeline, pipeline.jobs.compress...)."""
    names = set()
    for f in files:
        p = PurePosixPath(f)
        if p.suffix == ".py" and ".dist-info" not in p.parts[0]:
            parts = p.parent.parts if p.stem == "__init__" else (*p.parent.parts, p.stem)
            names.add(".".join(parts))
    return sorted(names)


def test_wheel_holds_every_package_and_its_data_and_nothing_else(installed):
    files = _wheel_files(installed.wheel)
    tops = {PurePosixPath(f).parts[0] for f in files}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {*TREES, *MODULES_ONLY}, sorted(tops)
    assert not {t for t in tops if t in NOT_SHIPPED}

    src = installed.src
    for top in TREES:
        # every folder holding Python files is a package in the wheel (pipeline.jobs once was not) ...
        folders = {PurePosixPath(f).parent for f in _source_files(src, top) if f.endswith(".py")}
        shipped = {PurePosixPath(f).parent for f in files if f.endswith(".py")}
        assert folders <= shipped, f"sub-packages missing from the wheel: {sorted(map(str, folders - shipped))}"
        # ... and every file below ships: modules, weights (any extension), zoo.json, static files
        missing = _source_files(src, top) - files
        assert not missing, f"{top}/ files missing from the wheel (package-data in pyproject.toml?): {sorted(missing)}"
    for top in MODULES_ONLY:
        own = {f for f in _source_files(src, top, recursive=False) if f.endswith(".py")}
        assert own and own <= files, sorted(own - files)
        assert {f for f in files if f.startswith(f"{top}/")} == own  # not its scripts (infra/gpu/carry.py...)
    assert "models/zoo.json" in files and any(f.startswith("models/weights/") for f in files)
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    entry_points = zipfile.ZipFile(installed.wheel).read(f"{min(dist_info)}/entry_points.txt").decode()
    assert "taid = flows.cli:main" in entry_points


def test_every_module_imports_from_the_fresh_venv(installed):
    """Outside the checkout, with no PYTHONPATH: each module the wheel holds imports (none needs a
    file left out of the wheel, tests/ or benchmarks/), and from the venv's copy, not the checkout."""
    modules = _modules(_wheel_files(installed.wheel))
    assert {"pipeline", "pipeline.jobs", "models", "flows", "infra"} <= set(modules)
    probe = (
        "import importlib, importlib.metadata as md, json, sys\n"
        "where = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    m = importlib.import_module(name)\n"
        "    where[name] = getattr(m, '__file__', None) or list(m.__path__)[0]\n"
        "dists = [str(d.locate_file('')) for d in md.distributions()\n"
        "         if (d.metadata['Name'] or '').lower().replace('_', '-') == 'taid-archive']\n"
        "print(json.dumps({'where': where, 'dists': dists}))\n"
    )
    proc = _run([installed.venv / "bin" / "python", "-c", probe, json.dumps(modules)], cwd=installed.outside,
                env=_outside_env())
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    site = installed.site.resolve()
    elsewhere = {n: p for n, p in report["where"].items() if not Path(p).resolve().is_relative_to(site)}
    assert not elsewhere, f"imported from outside {site}: {elsewhere}"
    assert not [p for p in report["where"].values() if Path(p).resolve().is_relative_to(ROOT)]
    # one installed copy of the project, the wheel's (the editable install did not leak in)
    assert [Path(d).resolve() for d in report["dists"]] == [site], report["dists"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _photo(path: Path) -> Path:
    """A crop of a real photo, 64x48: seconds on one core."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(ROOT / "tests" / "data" / "Set5" / "butterfly.png").convert("RGB").crop((64, 64, 128, 112)).save(path)
    return path


def test_installed_taid_compresses_and_rehydrates_a_file(installed):
    taid = installed.venv / "bin" / "taid"
    assert taid.read_text().splitlines()[0] == f"#!{installed.venv / 'bin' / 'python'}"
    work = installed.outside / "file"
    src = _photo(work / "photo.png")
    small, restored = work / "photo.webp", work / "restored.png"

    out = _run([taid, "compress-file", src, small], cwd=work, env=_outside_env()).stdout
    assert small.exists() and small.stat().st_size < src.stat().st_size, out
    _run([taid, "rehydrate-file", small, restored], cwd=work, env=_outside_env())
    original = np.asarray(Image.open(src).convert("RGB"))
    with Image.open(restored) as im:
        assert im.format == "PNG" and im.size == (64, 48)
        back = np.asarray(im.convert("RGB"))
    assert _psnr(back, original) > 25


@pytest.mark.services  # a local Ray through the installed job layer
def test_installed_taid_runs_the_job_layer(installed):
    """compress-archive and rehydrate go through pipeline.jobs (absent from the wheel once) and a
    local Ray, whose workers start from the venv's python too."""
    taid = installed.venv / "bin" / "taid"
    work = installed.outside / "archive"
    _photo(work / "photos" / "photo.png")
    env = {k: v for k, v in _outside_env().items() if not k.startswith("PREFECT_") and k != "RAY_ADDRESS"}
    env["PREFECT_HOME"] = str(work / "prefect-home")  # no profile with an API URL
    run = _run([taid, "compress-archive", "photos", "archive", "--workers", "1"], cwd=work, env=env)
    stats = json.loads(run.stdout)
    assert stats["by_status"] == {"ok": 1}, run.stdout[-2000:]
    _run([taid, "rehydrate", "archive", "photo.png", "-o", "back.png", "--log-level", "warning"], cwd=work, env=env)
    with Image.open(work / "back.png") as im:
        assert im.size == (64, 48)
