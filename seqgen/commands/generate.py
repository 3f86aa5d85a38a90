"""`seqgen generate`: sample from a checkpoint, as nanoGPT's sample.py does, for every task.

Text tasks print (or stream) their output; a task whose outputs are files (music) writes
`--out` through its `GeneratesFiles` hooks. Both go through the same `Generator`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqgen.devices import DeviceOptions
from seqgen.errors import SeqgenError
from seqgen.files import check_writable
from seqgen.generation.decoding import GenerationOptions
from seqgen.progress import Progress

log = logging.getLogger("seqgen")


@dataclass(kw_only=True)
class GenerateConfig(GenerationOptions, DeviceOptions):
    """Sample from a checkpoint: continue a text, translate, summarize, or continue a MIDI
    file. Options default to the checkpoint's task (e.g. beam search for translation); a
    task's own options show with `--task NAME --help` (music: --seconds, --piano_roll)."""

    ckpt: str
    """Checkpoint or run directory."""
    prompt: str = ""
    """The input: text to continue, translate or summarize; for music, a MIDI file
    (default: none, start from nothing)."""
    prompt_file: str | None = None
    """Read the text prompt from this UTF-8 file."""
    task: str | None = None
    """The task the checkpoint must be for (default: the checkpoint's own)."""
    out: str | None = None
    """Write the output to this file instead of printing it (music: the MIDI file)."""
    num_samples: int = 1
    """Independent samples of the prompt, generated as one batch."""
    mbr_samples: int = 1
    """Minimum Bayes risk: sample N outputs (with num_beams 1 and temperature > 0) and keep
    their consensus by the task's similarity (summarization: ROUGE-2 + ROUGE-Lsum F1)."""
    stop: list[str] = field(default_factory=list)
    """Strings that end the output (repeat the flag for several)."""
    stream: bool | None = None
    """Print text as it is produced (default: on for one printed sample)."""
    seed: int | None = None
    """Seed of the sampling (default: a random one)."""

    def __post_init__(self) -> None:
        GenerationOptions.__post_init__(self)
        DeviceOptions.__post_init__(self)
        check_writable(self.out, "out")
        if self.prompt and self.prompt_file:
            raise ValueError("give prompt or prompt_file, not both")
        if self.num_samples < 1 or self.mbr_samples < 1:
            raise ValueError("num_samples and mbr_samples must be >= 1")
        if self.stream and (self.num_samples > 1 or self.out):
            raise ValueError("stream prints one sample: drop num_samples and out, or stream")
        if self.mbr_samples > 1:
            if self.num_samples > 1 or self.stream or self.stop:
                raise ValueError("mbr_samples N keeps one consensus: no num_samples, stream, stop")
            self.check_mbr(self.mbr_samples)


def run(config: GenerateConfig, file_options: Any = None) -> None:
    """Generate as `config` says; `file_options` are the task's own generate options (for a
    task whose outputs are files)."""
    from seqgen.inference import load
    from seqgen.tasks import GeneratesFiles, HasMBR

    generator = load(config.ckpt, task=config.task, **config.load_options())
    task = generator.task
    prompt: Any = config.prompt
    if config.prompt_file:
        from seqgen.data import read_text_file

        if not Path(config.prompt_file).is_file():
            raise SeqgenError(f"{config.prompt_file}: no such file")
        prompt = read_text_file(Path(config.prompt_file))
    options = {**config.generation_options(), "seed": config.seed}
    try:
        if isinstance(task, GeneratesFiles):
            return _write_file(generator, config, prompt, options, file_options)
        if config.mbr_samples > 1:
            if not isinstance(task, HasMBR):
                raise SeqgenError(
                    f"mbr_samples: the {task.name} task has no similarity to choose by"
                )
            outputs = generator.generate_mbr(
                [prompt], samples=config.mbr_samples, similarity=task.mbr_similarity(), **options
            )[0]
        elif config.stream is not False and config.num_samples == 1 and not config.out:
            return _stream(generator, prompt, config.stop, options)
        else:
            outputs = generator.generate(
                prompt, num_samples=config.num_samples, stop=config.stop, **options
            )
    except ValueError as err:
        raise SeqgenError(str(err)) from None
    echo = prompt if task.continues_prompt else ""
    outputs = outputs if config.num_samples > 1 else [outputs]
    if len(outputs) == 1:
        text = echo + outputs[0] + "\n"
    else:
        text = "".join(f"--- sample {n + 1}\n{echo}{output}\n" for n, output in enumerate(outputs))
    if config.out:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.out).write_text(text)
        print(f"wrote {config.out}")
    else:
        sys.stdout.write(text)


class _Reporting:
    """A stop_fn that reports the tokens generated so far (a minute of music takes a while)
    and asks the task's own stop_fn, if any (then `most` is only a bound)."""

    def __init__(self, stop_fn: Callable[[list[int]], bool] | None, most: int) -> None:
        self.stop_fn = stop_fn
        self.progress = Progress("generated", most, "tokens", at_most=stop_fn is not None)

    def __call__(self, new: list[int]) -> bool:
        self.progress.set(len(new))
        return self.stop_fn is not None and self.stop_fn(new)


def _stream(generator, prompt: str, stop: list[str], options: dict[str, Any]) -> None:
    pieces = generator.stream(prompt, stop=stop, **options)  # checks the options first
    sys.stdout.write(prompt if generator.task.continues_prompt else "")
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _write_file(
    generator, config: GenerateConfig, prompt: Any, options: dict[str, Any], file_options: Any
) -> None:
    task = generator.task
    if not config.out:
        raise SeqgenError(f"the {task.name} task writes a file: give --out FILE")
    if config.num_samples > 1 or config.mbr_samples > 1 or config.stop or config.stream:
        raise SeqgenError(
            f"the {task.name} task writes one file: no num_samples, mbr_samples, stop or stream"
        )
    if file_options is None:
        file_options = task.generate_options()
    ids = generator.prompt_ids(prompt or None)
    for line in generate_file(generator, ids, options, file_options, Path(config.out)):
        print(line)


def generate_file(
    generator, ids: list[int], options: dict[str, Any], file_options: Any, path: Path
) -> list[str]:
    """A task's file output (and what `file_options` add) for the prompt `ids`: the task
    prepares the prompt and settings, the shared Generator continues it, the task writes;
    returns a line per file written. Raises ValueError for options that cannot work, before
    generating."""
    task = generator.task
    ids, settings = generator.file_settings(ids, options, file_options)
    settings["stop_fn"] = _Reporting(settings.get("stop_fn"), settings["max_new_tokens"])
    started = time.perf_counter()
    new = generator.continue_ids(ids, **settings)
    settings["stop_fn"].progress.finish()
    took = time.perf_counter() - started
    log.info("generated %d tokens in %.1f s (%.0f/s)", len(new), took, len(new) / max(took, 1e-9))
    return task.write(ids, new, generator.tokenizer, file_options, path)
