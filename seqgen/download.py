"""Datasets from their upstream sources: downloaded with resumption, checked against pinned
checksums, laid out where the recipes look (`seqgen data get NAME --out DIR`).

A task declares the datasets its recipes use (`BuildsDatasets.datasets`). Each names its
remote files, each with the checksum of the file as served or, where no archive can be
pinned (a repository snapshot), the checksums of the files it lays out (`pins`). Downloads
go to DIR/.downloads/NAME/ and resume where they stopped; the dataset is laid out in a
sibling folder and renamed to DIR/NAME only once every pinned file checks out.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from seqgen.errors import DataError
from seqgen.files import atomic_directory
from seqgen.progress import Progress

CHUNK = 1 << 20
ATTEMPTS = 3  # a transfer that breaks is resumed this many times before giving up
TIMEOUT_SECONDS = 60.0
STAMP = ".seqgen-data.json"  # in a complete dataset folder: what it was made from


@dataclass(frozen=True)
class Remote:
    """One file to download."""

    url: str
    checksum: str | None = None
    """`sha256:HEX` or `sha1:HEX` of the file as served; None where the dataset's `pins`
    check what it lays out instead."""
    name: str | None = None
    """The file's name in the downloads folder (default: the URL's last part)."""

    @property
    def filename(self) -> str:
        return self.name or PurePosixPath(urlsplit(self.url).path).name


@dataclass(frozen=True)
class RemoteDataset:
    """A dataset as `seqgen data get` fetches it."""

    name: str
    description: str
    licence: str
    citation: str
    homepage: str
    remotes: tuple[Remote, ...]
    arrange: Callable[[Path, Path], None]
    """`arrange(downloads, folder)` lays the verified downloads out in `folder`."""
    pins: Mapping[str, str] = field(default_factory=dict)
    """Checksums of laid-out files, by their path in the dataset's folder; a pin's hex may
    be the first 32 or more characters of the digest."""
    requires: tuple[str, ...] = ()
    """Datasets fetched first, into the same DIR (they are passed to nothing: `arrange`
    finds them beside its folder)."""

    def __post_init__(self) -> None:
        if any(r.checksum is None for r in self.remotes) and not self.pins:
            raise ValueError(f"dataset {self.name}: a remote without a checksum needs pins")

    def fingerprint(self) -> str:
        text = json.dumps([[r.url, r.checksum] for r in self.remotes] + [sorted(self.pins.items())])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


def matches(path: Path, checksum: str) -> bool:
    algorithm, _, expected = checksum.partition(":")
    return len(expected) >= 32 and digest(path, algorithm).startswith(expected.lower())


def fetch(remote: Remote, path: Path) -> Path:
    """`remote` at `path`, downloaded (resuming `path.part` where an earlier transfer
    stopped) and checked; a file that fails its checksum is deleted and named."""
    if path.is_file() and (remote.checksum is None or matches(path, remote.checksum)):
        return path
    path.unlink(missing_ok=True)
    partial = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _transfer(remote.url, partial, path)
            break
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as err:
            if attempt == ATTEMPTS:
                got = partial.stat().st_size if partial.exists() else 0
                raise DataError(
                    f"{remote.url}: the transfer broke off at {got:,} bytes ({err}); run the "
                    "same command again to resume it"
                ) from None
    if remote.checksum is not None and not matches(partial, remote.checksum):
        partial.unlink()
        raise DataError(
            f"{remote.url}: the download does not match its pinned checksum "
            f"({remote.checksum.split(':')[0]} should start {remote.checksum.split(':')[1][:16]}); "
            "it was deleted. The source may have changed; a mirror may be corrupt"
        )
    partial.rename(path)
    return path


def _transfer(url: str, partial: Path, path: Path) -> None:
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": "seqgen"} | ({"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urlopen(Request(url, headers=headers), timeout=TIMEOUT_SECONDS)
    except HTTPError as err:
        if err.code == 416 and offset:  # the partial file is whole already
            return
        raise DataError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(
            f"cannot reach {urlsplit(url).netloc} ({reason}). Offline, download {url} "
            f"yourself, put it at {path} and run the same command again"
        ) from None
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        total = int(length) + (offset if resumed else 0) if length else None
        progress = Progress(f"downloaded {path.name}:", total, "bytes")
        with open(partial, "ab" if resumed else "wb") as out:
            done = offset if resumed else 0
            while block := response.read(CHUNK):
                out.write(block)
                done += len(block)
                progress.set(done)
        progress.finish()
    if total is not None and done < total:
        raise http.client.IncompleteRead(b"", total - done)


def extract(archive: Path, into: Path) -> Path:
    """Unpack a .zip, .tar.gz/.tgz/.tar or .gz file into `into`; members that would land
    outside it are refused."""
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    name = archive.name
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DataError(f"{archive}: member {member!r} lies outside the archive")
            zipped.extractall(into)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    elif name.endswith(".gz"):
        import gzip

        with gzip.open(archive) as packed, open(into / name[: -len(".gz")], "wb") as out:
            shutil.copyfileobj(packed, out, CHUNK)
    else:
        raise DataError(f"{archive}: not an archive seqgen unpacks (.zip, .tar.gz, .gz)")
    return into


def verify(folder: Path, pins: Mapping[str, str], dataset: str) -> None:
    missing = [p for p in pins if not (folder / p).is_file()]
    if missing:
        raise DataError(
            f"{dataset}: {len(missing)} of {len(pins)} pinned files are not in the download "
            f"(first: {missing[0]}); the source may have changed"
        )
    wrong = [p for p, checksum in pins.items() if not matches(folder / p, checksum)]
    if wrong:
        raise DataError(
            f"{dataset}: {len(wrong)} of {len(pins)} files do not match their pinned "
            f"checksums (first: {wrong[0]}); the source may have changed"
        )


def get(
    name: str,
    out: Path,
    catalog: Mapping[str, RemoteDataset],
    *,
    keep_downloads: bool = False,
    overwrite: bool = False,
) -> Path:
    """Fetch the dataset `name` of `catalog` (and those it requires) into OUT/NAME."""
    if name not in catalog:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(catalog))}")
    dataset = catalog[name]
    for required in dataset.requires:
        get(required, out, catalog, keep_downloads=keep_downloads)
    folder = out / name
    stamp = folder / STAMP
    if stamp.is_file() and not overwrite:
        made = json.loads(stamp.read_text())
        if made.get("fingerprint") == dataset.fingerprint():
            print(f"{folder}: {name} is there already")
            return folder
    if folder.exists() and not stamp.is_file() and not overwrite:
        raise DataError(
            f"{folder} exists and was not made by `seqgen data get`: move it away, or pass "
            "--overwrite true to replace it"
        )
    downloads = out / ".downloads" / name
    for remote in dataset.remotes:
        fetch(remote, downloads / remote.filename)
    with atomic_directory(folder) as partial:
        dataset.arrange(downloads, partial)
        verify(partial, dataset.pins, name)
        if any(remote.checksum is None for remote in dataset.remotes):
            laid_out = (p.relative_to(partial).as_posix() for p in partial.rglob("*"))
            unpinned = sorted(
                p for p in laid_out if (partial / p).is_file() and p not in dataset.pins
            )
            if unpinned:
                (partial / "UNPINNED.txt").write_text("".join(f"{p}\n" for p in unpinned))
                print(
                    f"{name}: {len(unpinned)} files of the download have no pinned checksum "
                    f"(listed in {folder / 'UNPINNED.txt'}); the other {len(dataset.pins)} match"
                )
        record = {"dataset": name, "fingerprint": dataset.fingerprint(), "licence": dataset.licence}
        (partial / STAMP).write_text(json.dumps(record, indent=2) + "\n")
    if not keep_downloads:
        shutil.rmtree(downloads, ignore_errors=True)
        if downloads.parent.is_dir() and not any(downloads.parent.iterdir()):
            downloads.parent.rmdir()
    files = sum(1 for p in folder.rglob("*") if p.is_file() and p.name != STAMP)
    print(f"{folder}: {name}, {files:,} files. {dataset.description}")
    print(f"Licence: {dataset.licence}\nSource: {dataset.homepage}\nCite:\n{dataset.citation}")
    return folder


@dataclass
class GetConfig:
    """Download a dataset from its upstream source, check it against pinned checksums and
    lay it out where the recipes look (OUT/NAME); prints its licence and citation."""

    name: str
    """The dataset, also given first without the flag (`seqgen data get` alone lists them)."""
    out: str = "data"
    """The folder that receives OUT/NAME (and OUT/.downloads while downloading)."""
    keep_downloads: bool = False
    """Keep the downloaded archives in OUT/.downloads/NAME."""
    overwrite: bool = False
    """Replace OUT/NAME when it is there already, or was not made by seqgen data get."""


def run(config: GetConfig, catalog: Mapping[str, RemoteDataset]) -> Path:
    return get(
        config.name,
        Path(config.out).expanduser(),
        catalog,
        keep_downloads=config.keep_downloads,
        overwrite=config.overwrite,
    )


def describe(catalog: Mapping[str, RemoteDataset]) -> str:
    width = max(map(len, catalog), default=0)
    rows = (f"  {name:<{width}}  {d.description}" for name, d in sorted(catalog.items()))
    return "datasets:\n" + "\n".join(rows)
