"""The text recipes' corpora, as `seqgen data get` fetches them."""

from __future__ import annotations

import shutil
from pathlib import Path

from seqgen.download import Remote, RemoteDataset, extract

WIKITEXT_LICENCE = "Creative Commons Attribution-ShareAlike 3.0 (CC BY-SA 3.0)"
WIKITEXT_CITATION = """@inproceedings{merity2017pointer,
  title={Pointer Sentinel Mixture Models},
  author={Stephen Merity and Caiming Xiong and James Bradbury and Richard Socher},
  booktitle={International Conference on Learning Representations},
  year={2017}
}"""
WIKITEXT_HOME = "https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/"
# pytorch/examples keeps WikiText-2 v1 as plain files, the same bytes as wiki.*.tokens
EXAMPLES = (
    "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2"
)
SPLITS = ("train", "valid", "test")


def copy_as(names: dict[str, str]):
    """An `arrange` that copies downloads to new names in the dataset's folder."""

    def arrange(downloads: Path, folder: Path) -> None:
        for downloaded, laid_out in names.items():
            shutil.copyfile(downloads / downloaded, folder / laid_out)

    return arrange


def arrange_wikitext103(downloads: Path, folder: Path) -> None:
    unpacked = extract(downloads / "wikitext-103-v1.zip", downloads / "unpacked")
    for split in SPLITS:
        shutil.move(unpacked / "wikitext-103" / f"wiki.{split}.tokens", folder)
    shutil.rmtree(unpacked)


TINY_SHAKESPEARE = RemoteDataset(
    name="tinyshakespeare",
    description="1.1 MB of Shakespeare's plays (input.txt); the recipes hold out the last 10%.",
    licence="public domain (the collection: karpathy/char-rnn, MIT)",
    citation="Andrej Karpathy, char-rnn (2015), https://github.com/karpathy/char-rnn",
    homepage="https://github.com/karpathy/char-rnn",
    remotes=(
        Remote(
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
    ),
    arrange=copy_as({"input.txt": "input.txt"}),
)

WIKITEXT2 = RemoteDataset(
    name="wikitext2",
    description="WikiText-2 v1 (tokenized; rare words are <unk>): wiki.{train,valid,test}.tokens.",
    licence=WIKITEXT_LICENCE,
    citation=WIKITEXT_CITATION,
    homepage=WIKITEXT_HOME,
    remotes=(
        Remote(
            f"{EXAMPLES}/train.txt",
            "sha256:9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
        ),
        Remote(
            f"{EXAMPLES}/valid.txt",
            "sha256:f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
        ),
        Remote(f"{EXAMPLES}/test.txt", "sha1:c7b8ce0aa086fb34dab808c5c49224211eb2b172"),
    ),
    arrange=copy_as({f"{split}.txt": f"wiki.{split}.tokens" for split in SPLITS}),
)

WIKITEXT103 = RemoteDataset(
    name="wikitext103",
    description="WikiText-103 v1 (tokenized; rare words are <unk>): wiki.{train,valid,test}.tokens.",
    licence=WIKITEXT_LICENCE,
    citation=WIKITEXT_CITATION,
    homepage=WIKITEXT_HOME,
    remotes=(
        Remote(
            "https://wikitext.smerity.com/wikitext-103-v1.zip",
            "sha1:0aec09a7537b58d4bb65362fee27650eeaba625a",
        ),
    ),
    arrange=arrange_wikitext103,
    pins={
        "wiki.train.tokens": "sha1:b7497e2dfe77e72cfef5e3dbc61b7b53712ac211",
        "wiki.valid.tokens": "sha1:c326ac59dc587676d58c422eb8a03e119582f92b",
        "wiki.test.tokens": "sha1:8a5befc548865cec54ed4273cf87dbbad60d1e47",
    },
)

DATASETS = {d.name: d for d in (TINY_SHAKESPEARE, WIKITEXT2, WIKITEXT103)}
