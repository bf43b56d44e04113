"""The GPU check's carry: the wheels a bare GPU machine lacks, small enough to travel with one call.

    python infra/gpu/carry.py build [DIR] [--python-version 3.12] [--with-project]   (infra/gpu/carry.sh)
    python infra/gpu/carry.py project DIR                                            (only the project wheel)
    python infra/gpu/carry.py check DIR [--python-version 3.12]                      (closure + size report)

What the machine lacks (infra/gpu/carry-requirements.txt, pinned) is downloaded from the package
registry for its platform (CPython 3.12, manylinux x86_64), one wheel at a time without
dependencies; the dependency list is the requirements file, checked here: every Requires-Dist of a
carried wheel (markers evaluated for that Python on Linux, no extras) must be met by another carried
wheel or name a package the machine already has (infra/gpu/machine-packages.txt). Large wheels are
repacked (`repack_wheel`): ray without the parts a Python-only local Ray never loads, ELF symbol
tables stripped, every member LZMA-compressed. pip installs the result like any wheel, offline.

The 64 MiB a device call may carry covers the working tree too (which already holds the project
and its weights), so the project wheel is off unless asked for (`--with-project`): bench.sh
installs the project from the checkout that travels with the call.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

try:  # the venv has packaging; a bare python3 has pip's vendored copy
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pragma: no cover - depends on the interpreter
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIREMENTS = HERE / "carry-requirements.txt"
MACHINE_PACKAGES = HERE / "machine-packages.txt"
MIB = 1 << 20
CARRY_LIMIT = 60 * MIB  # issue 23's bar for the carry itself
CALL_LIMIT = 64 * MIB  # what one device call may send: working tree + carried paths
# The manylinux tags a CPython 3.12 x86_64 machine accepts (pip matches each tag exactly).
PLATFORMS = ["manylinux2014_x86_64", "manylinux1_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(17, 40)]
# Parts of ray that a local Ray running Python actors never loads: the Java workers' jar, the
# dashboard's web build (the dashboard is off), RLlib.
RAY_DROP = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/")
DROP = {"ray": RAY_DROP}  # distributions with parts left out (name -> member prefixes dropped)
# ELF symbol tables stripped only where the result was run (docs/gpu.md): ray's own binaries, not
# auditwheel-patched libraries, which strip after patchelf can break.
STRIP = {"ray"}
REPACK_ABOVE = 1 * MIB  # wheels larger than this are recompressed with LZMA (30-45 % smaller than deflate)
BUILD_TAG = "1"  # marks a repacked wheel: ray-2.60.0-1-cp312-...whl is not PyPI's file


# ------------------------------------------------------------------ wheels
@dataclass(frozen=True)
class WheelName:
    name: str
    version: str
    build: str | None
    tags: str  # python-abi-platform

    @classmethod
    def parse(cls, filename: str) -> "WheelName":
        parts = filename[: -len(".whl")].split("-")
        if len(parts) == 6:
            return cls(parts[0], parts[1], parts[2], "-".join(parts[3:]))
        if len(parts) == 5:
            return cls(parts[0], parts[1], None, "-".join(parts[2:]))
        raise ValueError(f"not a wheel file name: {filename}")

    def filename(self) -> str:
        return "-".join(p for p in (self.name, self.version, self.build, self.tags) if p) + ".whl"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def strip_elf(data: bytes, strip: str | None) -> bytes:
    """`data` without its symbol tables (`strip --strip-unneeded`: the dynamic symbols a loader
    needs stay). Unchanged when there is no strip program or it refuses the file."""
    if not strip:
        return data
    with tempfile.NamedTemporaryFile(suffix=".elf", delete=False) as f:
        f.write(data)
    try:
        done = subprocess.run([strip, "--strip-unneeded", f.name], capture_output=True)
        return Path(f.name).read_bytes() if done.returncode == 0 else data
    finally:
        os.unlink(f.name)


def repack_wheel(src: Path, dest_dir: Path, drop: tuple[str, ...] = (), strip: str | None = None,
                 build_tag: str = BUILD_TAG) -> Path:
    """A copy of the wheel `src` in `dest_dir` without the members under the `drop` prefixes, ELF
    files stripped (when `strip` names the program), every member LZMA-compressed, RECORD rewritten
    (hashes and sizes of what is there now) and a build tag in its name and WHEEL file. The list of
    what was dropped goes into the .dist-info as TAID_REPACKED."""
    name = WheelName.parse(src.name)
    out_name = WheelName(name.name, name.version, build_tag, name.tags)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / out_name.filename()
    dropped: dict[str, int] = {}
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        dist_info = next(i.filename.split("/")[0] for i in infos if i.filename.split("/")[0].endswith(".dist-info"))
        record_path = f"{dist_info}/RECORD"
        tmp = out.with_suffix(".part")
        records: list[tuple[str, str, str]] = []
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as zout:
            for info in infos:
                path = info.filename
                if path == record_path or path.endswith("/"):
                    continue
                top = next((p for p in drop if path.startswith(p)), None)
                if top is not None:
                    dropped[top] = dropped.get(top, 0) + info.file_size
                    continue
                data = zin.read(info)
                if path == f"{dist_info}/WHEEL":
                    lines = [ln for ln in data.decode().splitlines() if not ln.startswith("Build:")]
                    data = ("\n".join(lines + [f"Build: {build_tag}"]) + "\n").encode()
                elif _is_elf(data):
                    data = strip_elf(data, strip)
                zi = zipfile.ZipInfo(path, date_time=info.date_time)
                zi.external_attr = info.external_attr  # keeps the executables' mode (raylet, gcs_server)
                zi.compress_type = zipfile.ZIP_LZMA
                zout.writestr(zi, data)
                records.append((path, _record_hash(data), str(len(data))))
            note = "".join(f"{p}\t{n} bytes\n" for p, n in sorted(dropped.items())).encode()
            note = b"Repacked by infra/gpu/carry.py: members under these prefixes dropped; ELF symbol tables " \
                   b"stripped.\n" + note
            zout.writestr(f"{dist_info}/TAID_REPACKED", note, compress_type=zipfile.ZIP_LZMA)
            records.append((f"{dist_info}/TAID_REPACKED", _record_hash(note), str(len(note))))
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerows(records + [(record_path, "", "")])
            zout.writestr(record_path, buf.getvalue(), compress_type=zipfile.ZIP_LZMA)
    tmp.replace(out)
    return out


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(canonical name, version, Requires-Dist lines) of a wheel."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    fields = {"Name": "", "Version": ""}
    requires = []
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(": ")
        if key in fields:
            fields[key] = value.strip()
        elif key == "Requires-Dist":
            requires.append(value.strip())
    return canonicalize_name(fields["Name"]), fields["Version"], requires


# ------------------------------------------------------------------ the dependency closure
def target_environment(python_version: str) -> dict:
    """Marker values of the GPU machine's interpreter (CPython on Linux x86_64)."""
    env = dict(default_environment())
    major_minor = ".".join(python_version.split(".")[:2])
    env.update({"python_version": major_minor, "python_full_version": major_minor + ".0",
                "implementation_name": "cpython", "platform_python_implementation": "CPython",
                "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                "platform_machine": "x86_64", "extra": ""})
    return env


def read_names(path: Path) -> set[str]:
    """Package names, one a line (comments and blank lines ignored), canonicalised."""
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(canonicalize_name(line))
    return out


def read_pins(path: Path) -> list[Requirement]:
    """The requirements file: `name==version`, one a line, each with a comment saying why."""
    pins = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            if len(req.specifier) != 1 or next(iter(req.specifier)).operator != "==":
                raise ValueError(f"{path.name}: pin an exact version: {line}")
            pins.append(req)
    return pins


def check_closure(carried: dict[str, tuple[str, list[str]]], machine: set[str], env: dict) -> tuple[list[str], list[str]]:
    """(problems, assumptions) of a carry: `carried` maps canonical name -> (version, Requires-Dist).
    A requirement is met by a carried wheel whose version fits, else assumed met by the machine
    when it names one of `machine` (version unknown: listed in `assumptions`); anything else is a problem."""
    problems, assumptions = [], []
    for name, (_, requires) in sorted(carried.items()):
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # an extra, or another Python / platform
            dep = canonicalize_name(req.name)
            if dep in carried:
                if req.specifier and Version(carried[dep][0]) not in req.specifier:
                    problems.append(f"{name} needs {req}, the carry has {dep} {carried[dep][0]}")
            elif dep in machine:
                assumptions.append(f"{name} needs {req}: from the machine")
            else:
                problems.append(f"{name} needs {req}: neither carried nor on the machine")
    return problems, sorted(set(assumptions))


def carried_wheels(folder: Path) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for whl in sorted(folder.glob("*.whl")):
        name, version, requires = wheel_metadata(whl)
        if name in out:
            raise ValueError(f"two wheels of {name} in {folder}: pip --no-index would refuse them")
        out[name] = (version, requires)
    return out


# ------------------------------------------------------------------ sizes
def travelling_tree_bytes(root: Path = ROOT) -> int | None:
    """Bytes of what a device call sends besides the carry: tracked and untracked-not-ignored files."""
    try:
        names = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "-co", "--exclude-standard"],
                               capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for n in filter(None, names):
        p = root / os.fsdecode(n)
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def report(folder: Path, python_version: str, machine_file: Path = MACHINE_PACKAGES) -> int:
    """Print the carry's list, its size and the closure check; 0 when within the limits."""
    wheels = sorted(folder.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    print(f"carry {folder}/ for CPython {python_version}, manylinux x86_64:")
    for w in wheels:
        print(f"  {w.stat().st_size / MIB:7.2f} MiB  {w.name}")
    print(f"  {total / MIB:7.2f} MiB  total, {len(wheels)} wheels (limit {CARRY_LIMIT // MIB} MiB)")
    rc = 0
    problems, assumptions = check_closure(carried_wheels(folder), read_names(machine_file),
                                          target_environment(python_version))
    for a in assumptions:
        print(f"  assumed: {a}")
    for p in problems:
        print(f"  MISSING: {p}")
    if problems:
        rc = 1
    if total > CARRY_LIMIT:
        print(f"carry: {total / MIB:.1f} MiB is over {CARRY_LIMIT // MIB} MiB")
        rc = 1
    tree = travelling_tree_bytes()
    if tree is not None:
        both = tree + total
        verdict = "fits" if both <= CALL_LIMIT else "is OVER"
        print(f"with the working tree ({tree / MIB:.1f} MiB) one device call sends {both / MIB:.1f} MiB: "
              f"{verdict} the {CALL_LIMIT // MIB} MiB a call may carry")
        if both > CALL_LIMIT:
            rc = 1
    return rc


# ------------------------------------------------------------------ build
def pip_download(spec: str, dest: Path, python_version: str) -> Path:
    """One wheel for the GPU machine's platform, no dependencies (they are pinned one by one)."""
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", python_version, "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + [spec], check=True)
    name = canonicalize_name(Requirement(spec).name)
    found = [w for w in dest.glob("*.whl") if canonicalize_name(WheelName.parse(w.name).name) == name]
    if not found:
        raise RuntimeError(f"pip download {spec}: no wheel in {dest} ({sorted(set(dest.glob('*.whl')) - before)})")
    return found[0]


PROJECT_FILES = ("pyproject.toml", "README.md")


def project_packages(root: Path = ROOT) -> list[str]:
    """The top-level folders pyproject.toml packages: the first part of each `include` pattern of
    [tool.setuptools.packages.find] ("pipeline.*" -> pipeline); setuptools finds the rest in the copy."""
    import tomllib  # Python 3.11+, as everywhere this script runs (the venv, the GPU machine's 3.12)

    with open(root / "pyproject.toml", "rb") as f:
        find = tomllib.load(f).get("tool", {}).get("setuptools", {}).get("packages", {})
    include = find.get("find", {}).get("include") if isinstance(find, dict) else None
    if not include:
        raise ValueError("pyproject.toml: no [tool.setuptools.packages.find] include list")
    return sorted({pattern.split(".")[0].rstrip("*") for pattern in include})


def build_project(dest: Path) -> Path:
    """The project's wheel (models/weights included through package-data), built offline with the
    interpreter's setuptools. Built from a copy of pyproject.toml, README.md and the packages: the
    checkout gets no build/ or egg-info, and needs no git (a device call's copy has no .git)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("taid_archive-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="taid-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in PROJECT_FILES:
            shutil.copy2(ROOT / name, src / name)
        for pkg in project_packages():
            shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                               "--no-build-isolation", "--no-index", "-w", str(dest), str(src)],
                              capture_output=True, text=True)  # setuptools' warnings only matter on failure
        if done.returncode:
            raise RuntimeError(f"building the project wheel failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return next(dest.glob("taid_archive-*.whl"))


def build(folder: Path, python_version: str, with_project: bool, requirements: Path = REQUIREMENTS) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()  # one version of each: two would stop pip --no-index
    strip = shutil.which("strip")
    if not strip:
        print("carry: no `strip` program (binutils): ELF symbol tables stay, the carry is larger", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="taid-carry-") as tmp:
        for req in read_pins(requirements):
            whl = pip_download(str(req), Path(tmp), python_version)
            name = canonicalize_name(req.name)
            if name in DROP or whl.stat().st_size > REPACK_ABOVE:
                repack_wheel(whl, folder, DROP.get(name, ()), strip if name in STRIP else None)
            else:
                shutil.copy2(whl, folder / whl.name)
    if with_project:
        build_project(folder)
    return report(folder, python_version)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download, repack and check the carry")
    b.add_argument("dir", nargs="?", default=str(ROOT / ".gpu-carry"))
    b.add_argument("--python-version", default="3.12")
    b.add_argument("--with-project", action="store_true", help="add the project's wheel (13 MiB of weights)")
    b.add_argument("--requirements", default=str(REQUIREMENTS))
    p = sub.add_parser("project", help="only the project's wheel")
    p.add_argument("dir")
    c = sub.add_parser("check", help="list, size and dependency closure of a carry")
    c.add_argument("dir", nargs="?", default=str(ROOT / ".gpu-carry"))
    c.add_argument("--python-version", default="3.12")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        return build(Path(args.dir), args.python_version, args.with_project, Path(args.requirements))
    if args.cmd == "project":
        print(build_project(Path(args.dir)))
        return 0
    return report(Path(args.dir), args.python_version)


if __name__ == "__main__":
    sys.exit(main())
