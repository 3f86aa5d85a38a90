"""Multi30k as `seqgen data get` fetches it: the task 1 English-German splits whose
checksums are pinned, and train.en-de.txt (train.en, then train.de), the text that
configs/translation/multi30k_pretrain.yaml trains a language model on."""

from __future__ import annotations

import shutil
from pathlib import Path

from seqgen.download import Remote, RemoteDataset, extract

RAW = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
SPLITS = ("train", "val", "test_2016_flickr")
LANGUAGES = ("en", "de")


def arrange_multi30k(downloads: Path, folder: Path) -> None:
    for split in SPLITS:
        for lang in LANGUAGES:
            extract(downloads / f"{split}.{lang}.gz", folder)
    with open(folder / "train.en-de.txt", "wb") as both:
        for lang in LANGUAGES:
            with open(folder / f"train.{lang}", "rb") as side:
                shutil.copyfileobj(side, both)


MULTI30K = RemoteDataset(
    name="multi30k",
    description=(
        "Multi30k task 1, English-German image captions, one sentence per line: "
        "train (29,000), val (1,014), test_2016_flickr (1,000) .en/.de, and train.en-de.txt."
    ),
    licence=(
        "non-commercial research and education only (the Flickr30K terms of use); "
        "the translations: Multi30k's own terms"
    ),
    citation="""@inproceedings{elliott2016multi30k,
  title={Multi30K: Multilingual English-German Image Descriptions},
  author={Desmond Elliott and Stella Frank and Khalil Sima'an and Lucia Specia},
  booktitle={Proceedings of the 5th Workshop on Vision and Language},
  pages={70--74},
  year={2016}
}""",
    homepage="https://github.com/multi30k/dataset",
    remotes=tuple(Remote(f"{RAW}/{split}.{lang}.gz") for split in SPLITS for lang in LANGUAGES),
    arrange=arrange_multi30k,
    pins={
        "train.en": "sha256:460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
        "train.de": "sha256:2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
        "val.en": "sha256:1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
        "val.de": "sha256:660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
        "test_2016_flickr.en": "sha256:399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
        "test_2016_flickr.de": "sha256:4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
        "train.en-de.txt": "sha256:eef6bb57c6d6840345e8d00fb8f5a3f588f4bf9a264477980147f91674664504",
    },
)

DATASETS = {MULTI30K.name: MULTI30K}
