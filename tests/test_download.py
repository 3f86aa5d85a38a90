"""`seqgen data get` against an HTTP server on the loopback address that serves fixture
archives: good, corrupt, cut off mid-transfer and missing files, and the README's commands
with the real catalog's layouts (fixture archives shaped like the upstream ones)."""

import gzip
import hashlib
import io
import re
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

import seqgen.registry
from seqgen.cli import main
from seqgen.download import Remote, RemoteDataset, extract, fetch, get
from seqgen.errors import DataError
from seqgen.registry import remote_datasets

ROOT = Path(__file__).resolve().parents[1]


class Files(BaseHTTPRequestHandler):
    """Serves `server.files` by path, with byte ranges; `server.cut[path] = n` sends only
    the first half of the body the next n times (the connection then closes)."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
            start = int(match[1])
            if start >= len(body):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if server.cut.get(self.path, 0) > 0:
            server.cut[self.path] -= 1
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    httpd.files, httpd.cut, httpd.requests = {}, {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def zipped(members: dict[str, bytes]) -> bytes:
    """The same bytes for the same members: a fixed time stamp, not the clock's (two archives
    made across a two-second boundary had different checksums)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


SONGS = {f"corpus/{name}.txt": f"song {name}\n".encode() * 500 for name in ("a", "b")}


def unzip_corpus(downloads: Path, folder: Path) -> None:
    extract(downloads / "corpus.zip", folder)


def corpus(server, **changes) -> dict[str, RemoteDataset]:
    archive = zipped(SONGS)
    server.files["/corpus.zip"] = archive
    dataset = RemoteDataset(
        name="corpus",
        description="two songs",
        licence="CC0",
        citation="@misc{corpus}",
        homepage="https://example.org",
        remotes=(Remote(f"{server.url}/corpus.zip", sha256(archive)),),
        arrange=unzip_corpus,
    )
    return {"corpus": replace(dataset, **changes)}


def test_a_good_archive_is_verified_laid_out_and_fetched_once(server, tmp_path, capsys):
    folder = get("corpus", tmp_path, corpus(server))
    assert {p: (folder / p).read_bytes() for p in SONGS} == SONGS
    out = capsys.readouterr().out
    assert "Licence: CC0" in out and "@misc{corpus}" in out and "2 files" in out
    assert not (tmp_path / ".downloads").exists()  # the archive is not kept
    get("corpus", tmp_path, corpus(server))
    assert "is there already" in capsys.readouterr().out
    assert len(server.requests) == 1


def test_a_corrupt_archive_is_deleted_and_named(server, tmp_path):
    catalog = corpus(server)
    server.files["/corpus.zip"] = server.files["/corpus.zip"][:-1] + b"!"
    with pytest.raises(DataError, match=r"corpus\.zip: the download does not match its pinned"):
        get("corpus", tmp_path, catalog)
    assert not (tmp_path / "corpus").exists()
    assert not list((tmp_path / ".downloads").rglob("*.part"))  # nothing bad is kept


def test_an_interrupted_transfer_resumes_where_it_stopped(server, tmp_path):
    catalog = corpus(server)
    size = len(server.files["/corpus.zip"])
    server.cut["/corpus.zip"] = 1  # the first transfer breaks off halfway
    get("corpus", tmp_path, catalog)
    (first, none), (_, resumed) = server.requests
    assert none is None and resumed == f"bytes={size // 2}-"
    assert (tmp_path / "corpus" / "corpus" / "a.txt").read_bytes() == SONGS["corpus/a.txt"]


def test_a_transfer_that_keeps_breaking_resumes_in_the_next_run(server, tmp_path):
    catalog = corpus(server)
    server.cut["/corpus.zip"] = 3  # every attempt of this run breaks
    with pytest.raises(DataError, match="broke off at .* run the same command again"):
        get("corpus", tmp_path, catalog)
    kept = (tmp_path / ".downloads" / "corpus" / "corpus.zip.part").stat().st_size
    assert 0 < kept < len(server.files["/corpus.zip"])
    get("corpus", tmp_path, catalog)
    assert server.requests[-1][1] == f"bytes={kept}-"
    assert (tmp_path / "corpus" / "corpus" / "b.txt").is_file()


def test_a_missing_file_and_an_unreachable_host_are_one_clear_error(server, tmp_path):
    catalog = corpus(server)
    del server.files["/corpus.zip"]
    with pytest.raises(DataError, match=r"corpus\.zip: HTTP 404"):
        get("corpus", tmp_path, catalog)
    offline = corpus(
        server, remotes=(Remote("http://127.0.0.1:9/corpus.zip", "sha256:" + "0" * 64),)
    )
    where = tmp_path / ".downloads" / "corpus" / "corpus.zip"
    with pytest.raises(DataError, match=f"cannot reach 127.0.0.1:9 .* put it at {where}"):
        get("corpus", tmp_path, offline)


def test_a_file_put_in_place_by_hand_is_checked_and_used(server, tmp_path):
    catalog = corpus(server)
    manual = tmp_path / ".downloads" / "corpus" / "corpus.zip"
    manual.parent.mkdir(parents=True)
    manual.write_bytes(server.files.pop("/corpus.zip"))  # offline: the server has nothing
    get("corpus", tmp_path, catalog)
    assert (tmp_path / "corpus" / "corpus" / "a.txt").is_file() and not server.requests


def test_pins_check_what_an_unpinned_snapshot_lays_out(server, tmp_path, capsys):
    pins = {"corpus/a.txt": sha256(SONGS["corpus/a.txt"])[:39]}  # a 32-character prefix
    snapshot = corpus(server, remotes=(Remote(f"{server.url}/corpus.zip"),), pins=pins)
    folder = get("corpus", tmp_path, snapshot)
    assert (folder / "UNPINNED.txt").read_text() == "corpus/b.txt\n"
    assert "1 files of the download have no pinned checksum" in capsys.readouterr().out
    wrong = {"corpus/a.txt": sha256(b"other")}
    with pytest.raises(DataError, match=r"1 of 1 files do not match .* \(first: corpus/a.txt\)"):
        get(
            "corpus",
            tmp_path / "again",
            corpus(server, remotes=snapshot["corpus"].remotes, pins=wrong),
        )
    assert not (tmp_path / "again" / "corpus").exists()
    with pytest.raises(ValueError, match="needs pins"):
        corpus(server, remotes=(Remote(f"{server.url}/corpus.zip"),))


def test_a_folder_not_made_by_data_get_is_not_replaced(server, tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="was not made by `seqgen data get`"):
        get("corpus", tmp_path, corpus(server))
    assert (tmp_path / "corpus" / "mine.txt").read_text() == "keep"
    get("corpus", tmp_path, corpus(server), overwrite=True)
    assert not (tmp_path / "corpus" / "mine.txt").exists()


def test_an_archive_member_outside_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(zipped({"../escaped.txt": b"x"}))
    with pytest.raises(DataError, match="lies outside the archive"):
        extract(archive, tmp_path / "into")
    assert not (tmp_path / "escaped.txt").exists()


def test_fetch_rechecks_a_finished_download(server, tmp_path):
    server.files["/f.txt"] = b"right"
    remote = Remote(f"{server.url}/f.txt", sha256(b"right"))
    path = tmp_path / "f.txt"
    path.write_bytes(b"stale")  # an earlier, different file of the same name
    assert fetch(remote, path).read_bytes() == b"right"


# ---- the real catalog, with fixture archives shaped like the upstream ones ----------------

ARTICLE = " = {title} = \n \n {lead} \n \n = = Section = = \n \n {body} \n \n"


def wikitext(split: str) -> bytes:
    words = "the river castle stands by the old bridge of the town".split()
    text = "".join(
        ARTICLE.format(
            title=f"{split.title()} Article {i}",
            lead=" ".join(words * 4),
            body=" ".join(words * 12),
        )
        for i in range(3)
    )
    return text.encode()


def midi(tag: str) -> bytes:
    return b"MThd" + tag.encode()  # arranging never parses them


def upstream_fixtures() -> dict[str, dict[str, bytes]]:
    """What each remote serves, by dataset and file name."""
    pop = {f"POP909-Dataset-master/POP909/{n}/{n}.mid": midi(n) for n in ("001", "002")}
    pop["POP909-Dataset-master/POP909/001/versions/v1.mid"] = midi("version")
    asap = {
        "asap-dataset-master/Bach/Fugue/bwv_846/Shi05M.mid": midi("train"),
        "asap-dataset-master/Bach/Fugue/bwv_846/midi_score.mid": midi("score"),
        "asap-dataset-master/Bach/Fugue/bwv_857/Lan01M.mid": midi("valid"),
        "asap-dataset-master/Unknown/Piece/X01.mid": midi("held out"),
    }
    csv = "canonical_composer,split,midi_filename\nA,train,2004/a.midi\nB,test,2006/b.midi\n"
    csv += "C,validation,2008/c.midi\n"
    maestro = {
        "maestro-v3.0.0/maestro-v3.0.0.csv": csv.encode(),
        "maestro-v3.0.0/2004/a.midi": midi("a"),
        "maestro-v3.0.0/2006/b.midi": midi("b"),
        "maestro-v3.0.0/2008/c.midi": midi("c"),
    }
    multi30k = {
        f"{split}.{lang}.gz": gzip.compress(f"{split} {lang} line\n".encode() * 3, mtime=0)
        for split in ("train", "val", "test_2016_flickr")
        for lang in ("en", "de")
    }
    return {
        "tinyshakespeare": {"input.txt": b"ROMEO:\nA fixture.\n"},
        "wikitext2": {f"{s}.txt": wikitext(s) for s in ("train", "valid", "test")},
        "wikitext103": {
            "wikitext-103-v1.zip": zipped(
                {f"wikitext-103/wiki.{s}.tokens": wikitext(s) for s in ("train", "valid", "test")}
            )
        },
        "multi30k": multi30k,
        "pop909": {"POP909-Dataset-master.zip": zipped(pop)},
        "asap": {"asap-dataset-master.zip": zipped(asap)},
        "maestro": {"maestro-v3.0.0-midi.zip": zipped(maestro)},
    }


FIXTURE_PINS = {  # laid-out files of the fixtures, for the datasets that pin them
    "wikitext103": {f"wiki.{s}.tokens": sha256(wikitext(s)) for s in ("train", "valid", "test")},
    "pop909": {"001.mid": sha256(midi("001")), "002.mid": sha256(midi("002"))},
    "asap": {
        "train/Bach__Fugue__bwv_846/Shi05M.mid": sha256(midi("train")),
        "valid/Bach__Fugue__bwv_857/Lan01M.mid": sha256(midi("valid")),
    },
}


@pytest.fixture
def fixture_catalog(server, monkeypatch):
    """The real catalog, its remotes served by `server` with the fixtures' checksums."""
    served = upstream_fixtures()
    catalog = {}
    for name, dataset in remote_datasets().items():
        files = served.get(name, {})
        remotes = []
        for remote in dataset.remotes:
            body = files[remote.filename]
            server.files[f"/{name}/{remote.filename}"] = body
            checksum = sha256(body) if remote.checksum else None
            remotes.append(
                replace(remote, url=f"{server.url}/{name}/{remote.filename}", checksum=checksum)
            )
        pins = FIXTURE_PINS.get(name, {}) if dataset.pins and name != "multi30k" else {}
        if name == "multi30k":
            pins = {"train.en": sha256(b"train en line\n" * 3)}
        catalog[name] = replace(dataset, remotes=tuple(remotes), pins=pins)
    monkeypatch.setattr(seqgen.registry, "remote_datasets", lambda: catalog)
    return catalog


def readme_data_gets() -> list[str]:
    return re.findall(
        r"^seqgen data get (\w+) --out data\b", (ROOT / "README.md").read_text(), re.M
    )


def recipe_data_paths() -> set[str]:
    """Every data path of every recipe that lies under data/."""
    found = set()
    for recipe in (ROOT / "configs").rglob("*.yaml"):
        data = yaml.safe_load(recipe.read_text()).get("data", {})
        for key in ("source", "train", "val"):
            if str(data.get(key, "")).startswith("data/"):
                found.add(data[key])
    return found


def exists(path: Path) -> bool:
    """A file, folder, or prefix of aligned files (data/multi30k/train -> train.en)."""
    return path.exists() or any(path.parent.glob(path.name + ".*"))


def test_the_readme_gets_every_recipes_data_with_the_real_layouts(
    fixture_catalog, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    names = readme_data_gets()
    assert set(names) >= {"tinyshakespeare", "multi30k", "wikisum", "pop909"}
    for name in [*names, "asap"]:  # asap: configs/music/asap.yaml
        assert main(["data", "get", name, "--out", "data"]) == 0
    missing = [p for p in sorted(recipe_data_paths()) if not exists(tmp_path / p)]
    assert not missing, f"recipes read data that `seqgen data get` does not lay out: {missing}"
    data = tmp_path / "data"
    assert (data / "multi30k" / "train.en-de.txt").read_text() == "train en line\n" * 3 + (
        "train de line\n" * 3
    )
    assert sorted(p.name for p in (data / "pop909").glob("*.mid")) == ["001.mid", "002.mid"]
    rows = (data / "wikisum" / "valid.jsonl").read_text().splitlines()
    assert len(rows) == 3 and '"title": "Valid Article 0"' in rows[0]
    assert (data / "wikitext2" / "wiki.test.tokens").read_bytes() == wikitext("test")


def test_asap_and_maestro_keep_their_splits(fixture_catalog, tmp_path):
    asap = get("asap", tmp_path, fixture_catalog)
    assert sorted(p.relative_to(asap).as_posix() for p in asap.rglob("*.mid")) == [
        "test/Unknown__Piece/X01.mid",  # a piece in neither split: held out
        "train/Bach__Fugue__bwv_846/Shi05M.mid",  # scores are left out
        "valid/Bach__Fugue__bwv_857/Lan01M.mid",
    ]
    maestro = get("maestro", tmp_path, fixture_catalog)
    assert (maestro / "train" / "2004" / "a.midi").is_file()
    assert (maestro / "test" / "2006" / "b.midi").is_file()
    assert (maestro / "validation" / "2008" / "c.midi").is_file()
    assert (maestro / "maestro-v3.0.0.csv").is_file()


def test_the_catalog_pins_every_download():
    for name, dataset in remote_datasets().items():
        for remote in dataset.remotes:
            assert remote.url.startswith("https://"), name
            assert remote.checksum or dataset.pins, f"{name}: {remote.url} is checked by nothing"
        assert dataset.licence and dataset.citation and dataset.homepage.startswith("https://")


@pytest.mark.skipif(not Path("../shared/data/pop909").is_dir(), reason="../shared/data absent")
def test_the_pins_match_the_shared_copies():
    shared = Path("../shared/data")
    catalog = remote_datasets()
    for name in ("pop909", "asap"):
        pins = catalog[name].pins
        for path, checksum in list(pins.items())[:50]:
            assert sha256((shared / name / path).read_bytes()).startswith(checksum), path
