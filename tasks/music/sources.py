"""The music recipes' corpora, as `seqgen data get` fetches them. POP909 and ASAP come as
snapshots of their repositories, which no checksum can pin: the MIDI files laid out are
checked against pins of their own (pins/*.json)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from seqgen.download import Remote, RemoteDataset, extract

PINS = Path(__file__).parent / "pins"
NON_COMMERCIAL = "Creative Commons Attribution-NonCommercial-ShareAlike 4.0 (CC BY-NC-SA 4.0)"


def pins(name: str) -> dict[str, str]:
    return json.loads((PINS / f"{name}.json").read_text())


def only_folder(path: Path) -> Path:
    """The one folder an archive unpacked into (GitHub's `REPO-BRANCH/`)."""
    (folder,) = (p for p in path.iterdir() if p.is_dir())
    return folder


def arrange_pop909(downloads: Path, folder: Path) -> None:
    unpacked = extract(downloads / "POP909-Dataset-master.zip", downloads / "unpacked")
    for song in sorted((only_folder(unpacked) / "POP909").iterdir()):
        if (song / f"{song.name}.mid").is_file():  # the performance, not its versions
            shutil.move(song / f"{song.name}.mid", folder / f"{song.name}.mid")
    shutil.rmtree(unpacked)


def arrange_asap(downloads: Path, folder: Path) -> None:
    """Performances only (not the scores), a folder per piece (`Bach__Fugue__bwv_846`), in
    train/ and valid/ as the recipes split them by piece; pieces in neither go to test/."""
    unpacked = extract(downloads / "asap-dataset-master.zip", downloads / "unpacked")
    root = only_folder(unpacked)
    split_of = {Path(path).parent.name: Path(path).parts[0] for path in ASAP.pins}
    for performance in sorted(root.rglob("*.mid")):
        if performance.name == "midi_score.mid":
            continue
        piece = "__".join(performance.parent.relative_to(root).parts)
        target = folder / split_of.get(piece, "test") / piece
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(performance, target / performance.name)
    shutil.rmtree(unpacked)


def arrange_maestro(downloads: Path, folder: Path) -> None:
    """MAESTRO's own split (train/validation/test, no composition in two), by its CSV."""
    unpacked = extract(downloads / "maestro-v3.0.0-midi.zip", downloads / "unpacked")
    root = unpacked / "maestro-v3.0.0"
    with open(root / "maestro-v3.0.0.csv", newline="") as rows:
        for row in csv.DictReader(rows):
            target = folder / row["split"] / row["midi_filename"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(root / row["midi_filename"], target)
    shutil.move(root / "maestro-v3.0.0.csv", folder / "maestro-v3.0.0.csv")
    shutil.rmtree(unpacked)


POP909 = RemoteDataset(
    name="pop909",
    description="POP909: 909 pop songs arranged for and played on piano (NNN.mid).",
    licence="MIT",
    citation="""@inproceedings{wang2020pop909,
  title={POP909: A Pop-song Dataset for Music Arrangement Generation},
  author={Ziyu Wang and Ke Chen and Junyan Jiang and Yiyi Zhang and Maoran Xu and Shuqi Dai and Guxian Bin and Gus Xia},
  booktitle={Proceedings of the 21st International Society for Music Information Retrieval Conference},
  year={2020}
}""",
    homepage="https://github.com/music-x-lab/POP909-Dataset",
    remotes=(
        Remote(
            "https://github.com/music-x-lab/POP909-Dataset/archive/refs/heads/master.zip",
            name="POP909-Dataset-master.zip",
        ),
    ),
    arrange=arrange_pop909,
    pins=pins("pop909"),
)

ASAP = RemoteDataset(
    name="asap",
    description=(
        "ASAP: classical piano performances (Disklavier and e-Competition), split by piece "
        "into train/, valid/ and test/ (PIECE/PERFORMER.mid)."
    ),
    licence=NON_COMMERCIAL,
    citation="""@inproceedings{foscarin2020asap,
  title={ASAP: a dataset of aligned scores and performances for piano transcription},
  author={Francesco Foscarin and Andrew McLeod and Philippe Rigaux and Florent Jacquemard and Masahiko Sakai},
  booktitle={Proceedings of the 21st International Society for Music Information Retrieval Conference},
  year={2020}
}""",
    homepage="https://github.com/fosfrancesco/asap-dataset",
    remotes=(
        Remote(
            "https://github.com/fosfrancesco/asap-dataset/archive/refs/heads/master.zip",
            name="asap-dataset-master.zip",
        ),
    ),
    arrange=arrange_asap,
    pins=pins("asap"),
)

MAESTRO = RemoteDataset(
    name="maestro",
    description=(
        "MAESTRO v3.0.0 (MIDI): 1,276 piano competition performances in MAESTRO's own "
        "train/, validation/ and test/ (YEAR/NAME.midi), with its CSV."
    ),
    licence=NON_COMMERCIAL,
    citation="""@inproceedings{hawthorne2019enabling,
  title={Enabling Factorized Piano Music Modeling and Generation with the {MAESTRO} Dataset},
  author={Curtis Hawthorne and Andriy Stasyuk and Adam Roberts and Ian Simon and Cheng-Zhi Anna Huang and Sander Dieleman and Erich Elsen and Jesse Engel and Douglas Eck},
  booktitle={International Conference on Learning Representations},
  year={2019}
}""",
    homepage="https://magenta.tensorflow.org/datasets/maestro",
    remotes=(
        Remote(
            "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip",
            "sha256:70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c",
        ),
    ),
    arrange=arrange_maestro,
)

DATASETS = {d.name: d for d in (POP909, ASAP, MAESTRO)}
