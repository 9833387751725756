"""Check that a folder of wheels is one consistent set for the GPU machine (stdlib + packaging).

Used by ``scripts/gpu-wheels.sh`` after downloading and by ``scripts/gpu-check.sh`` before
installing. A set is consistent when:

* it holds one wheel per project (two versions stop ``pip install --no-deps`` halfway);
* every wheel installs on CPython 3.12, Linux x86_64 (``py3-none-any``, ``cp312-cp312-manylinux*``,
  ``cp3x-abi3-manylinux*``);
* every requirement of every wheel (markers evaluated for that platform, extras ignored) is met by
  a wheel of the set at a version inside its specifier, or is one of the packages the GPU image
  already has (``--present``, one name per line; versions there are not checked).

Exit 0 when consistent, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

TARGET_ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
              "implementation_name": "cpython", "platform_python_implementation": "CPython",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}


def _tag_ok(tags: frozenset) -> bool:
    for t in tags:
        plat_ok = t.platform == "any" or (t.platform.startswith("manylinux") and t.platform.endswith("x86_64"))
        interp_ok = t.interpreter in ("py3", "cp312") or (t.abi == "abi3" and re.fullmatch(r"cp3(\d+)", t.interpreter)
                                                           and int(t.interpreter[3:]) <= 12)
        if plat_ok and interp_ok:
            return True
    return False


def _metadata(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        name = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
        if name is None:
            raise ValueError("no .dist-info/METADATA inside")
        return z.read(name).decode("utf-8", "replace")


def check(folder: Path, present: set[str]) -> list[str]:
    problems: list[str] = []
    wheels: dict[str, tuple[Version, Path]] = {}
    for path in sorted(folder.glob("*.whl")):
        try:
            name, version, _, tags = parse_wheel_filename(path.name)
        except Exception as exc:
            problems.append(f"{path.name}: not a wheel file name ({exc})")
            continue
        if name in wheels:
            problems.append(f"{name}: two wheels ({wheels[name][1].name} and {path.name}); keep one")
            continue
        wheels[name] = (version, path)
        if not _tag_ok(tags):
            problems.append(f"{path.name}: does not install on CPython 3.12 / Linux x86_64")
    if not wheels:
        problems.append(f"no wheels in {folder}")
    present_names = {canonicalize_name(p) for p in present}
    for name, (_, path) in sorted(wheels.items()):
        try:
            meta = Parser().parsestr(_metadata(path))
        except Exception as exc:
            problems.append(f"{path.name}: cannot read its metadata ({exc})")
            continue
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({**TARGET_ENV, "extra": ""}):
                continue  # an extra's requirement, or another platform's
            dep = canonicalize_name(req.name)
            if dep in wheels:
                have = wheels[dep][0]
                if req.specifier and not req.specifier.contains(have, prereleases=True):
                    problems.append(f"{name} needs {req}, but the set has {dep} {have}")
            elif dep not in present_names:
                problems.append(f"{name} needs {req}: neither in the set nor on the GPU image")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--present", type=Path, help="file listing the packages the GPU machine already has")
    args = ap.parse_args(argv)
    present: set[str] = set()
    if args.present:
        present = {x.strip() for x in args.present.read_text().splitlines() if x.strip() and not x.startswith("#")}
    problems = check(args.folder, present)
    for p in problems:
        print(f"wheel set: {p}", file=sys.stderr)
    if not problems:
        names = ", ".join(sorted(p.name for p in args.folder.glob("*.whl")))
        print(f"wheel set OK: {names}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
