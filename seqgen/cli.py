"""`seqgen` command line. Each command has its own parser; config-driven commands use
jsonargparse, so every config key can be set as `--section.key value` after `--config FILE`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

from seqgen.errors import SeqgenError

log = logging.getLogger("seqgen")


def _config_parser(prog: str, description: str, config_class: type, skip: set[str] = frozenset()):
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(
        prog=prog, description=description, exit_on_error=False, default_meta=False
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file.")
    parser.add_class_arguments(config_class, as_group=False, skip=set(skip))
    return parser


def _parse(parser, argv: Sequence[str], config_class: type):
    """Parse and build the config dataclass; errors name the offending key (and file)."""
    try:
        namespace = parser.parse_args(list(argv))
    except argparse.ArgumentError as err:
        files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
        where = f" (config: {', '.join(files)})" if files else ""
        raise SeqgenError(f"{str(err).strip()}{where}") from None
    built = parser.instantiate(namespace)
    try:
        return namespace, config_class(**{f.name: built[f.name] for f in fields(config_class)
                                          if f.name in built})  # fmt: skip
    except TypeError as err:
        raise SeqgenError(str(err)) from None


# What differs between the two training commands: their defaults, nothing else.
RUN_DEFAULTS = {
    "pretrain": {"task": "text", "init_from": "none", "out_dir": "runs/pretrain"},
    "finetune": {"out_dir": "runs/finetune"},
}


def parse_run(command: str, argv: Sequence[str]):
    """(RunConfig, report path) from `seqgen pretrain|finetune` arguments: the run's keys,
    the task's `data.*` keys and --report; None when only the list of tasks was asked for."""
    from seqgen.tasks import task_class
    from seqgen.train import FROM_SCRATCH, RunConfig

    argv = ["--init_from" if a == "--from" else a for a in argv]
    argv = ["--init_from=" + a[7:] if a.startswith("--from=") else a for a in argv]
    defaults = RUN_DEFAULTS[command]
    name = _task_of(argv) or defaults.get("task")
    if name is None:
        if any(a in ("-h", "--help") for a in argv):
            print(_tasks_help(command))
            return None
        raise SeqgenError("set the task: --task NAME (or `task:` in the config)\n"
                          + _tasks_help(command))  # fmt: skip
    task = task_class(name)
    parser = _config_parser(f"seqgen {command}", RunConfig.__doc__, RunConfig, skip={"data"})
    parser.add_class_arguments(task.data_config, nested_key="data")
    parser.add_argument("--report", type=str | None, default=None,
                        help="Write a JSON report (val_loss, tokens_per_second, ...).")  # fmt: skip
    parser.set_defaults({**defaults, "task": name})
    namespace, cfg = _parse(parser, argv, RunConfig)
    if command == "pretrain" and cfg.init_from not in (None, FROM_SCRATCH):  # --from or config
        raise SeqgenError(f"seqgen pretrain trains from scratch (init_from: {cfg.init_from}); "
                          "to start from a checkpoint use seqgen finetune --from CKPT")  # fmt: skip
    return cfg, namespace.report


def cmd_train(command: str, argv: Sequence[str]) -> int:
    from seqgen.train import run

    parsed = parse_run(command, argv)
    if parsed is None:
        return 0
    cfg, report_path = parsed
    _print_table(command, run(cfg, report_path))
    return 0


def _option_value(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name X` or `--name=X` in argv (the last one wins), if present."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _task_of(argv: Sequence[str]) -> str | None:
    """The task named by --task, or by `task:` in the --config file(s)."""
    task = _option_value(argv, "--task")
    if task is not None:
        return task
    import yaml

    for i, arg in enumerate(argv[:-1]):
        if arg == "--config":
            try:
                values = yaml.safe_load(Path(argv[i + 1]).read_text())
            except (OSError, yaml.YAMLError) as err:
                raise SeqgenError(f"{argv[i + 1]}: cannot read the config ({err})") from None
            if isinstance(values, dict) and values.get("task"):
                task = str(values["task"])
    return task


def _tasks_help(command: str) -> str:
    from seqgen.tasks import available_tasks

    names = ", ".join(sorted(available_tasks()))
    return f"usage: seqgen {command} --task NAME [--help] ...\n\ntasks: {names}"


def _checkpoint_task(argv: Sequence[str]) -> str | None:
    """The task of the checkpoint that --ckpt names, if any."""
    ckpt = _option_value(argv, "--ckpt")
    if ckpt is None:
        return None
    from seqgen import checkpoint

    return checkpoint.read_meta(checkpoint.resolve(ckpt))["task"]


def _task_named(argv: Sequence[str]) -> str | None:
    """The task of --task, or else of the checkpoint that --ckpt names."""
    return _task_of(argv) or _checkpoint_task(argv)


def cmd_evaluate(argv: Sequence[str]) -> int:
    from seqgen.tasks import Evaluates, task_class

    name = _task_named(argv)
    if name is None:
        if any(a in ("-h", "--help") for a in argv):
            print(_tasks_help("evaluate"))
            return 0
        raise SeqgenError("set the task: --task NAME\n" + _tasks_help("evaluate"))
    task = task_class(name)
    if not issubclass(task, Evaluates):
        raise SeqgenError(f"the {name} task has no evaluation")
    task.evaluate(list(argv))  # the task's parser accepts --task too
    return 0


def cmd_data(argv: Sequence[str]) -> int:
    from seqgen.tasks import data_builders

    builders = data_builders()
    if not argv or argv[0] not in builders:
        print(f"usage: seqgen data BUILDER [--help] ...\n\nbuilders: {', '.join(builders)}")
        if argv and argv[0] not in ("-h", "--help"):
            raise SeqgenError(f"unknown data builder {argv[0]!r}")
        return 0
    return builders[argv[0]](list(argv[1:]))


def cmd_tokenizer(argv: Sequence[str]) -> int:
    from seqgen.tasks import task_class
    from seqgen.train_tokenizer import TokenizerTrainConfig, run

    usage = "usage: seqgen tokenizer train [--help] [--task NAME] --data.source PATH --out DIR"
    if not argv or argv[0] not in ("train", "-h", "--help"):
        raise SeqgenError(usage)
    if argv[0] != "train":
        print(usage)
        return 0
    name = _task_of(argv[1:]) or TokenizerTrainConfig.task
    parser = _config_parser("seqgen tokenizer train", TokenizerTrainConfig.__doc__,
                            TokenizerTrainConfig, skip={"data"})  # fmt: skip
    parser.add_class_arguments(task_class(name).data_config, nested_key="data")
    _, cfg = _parse(parser, argv[1:], TokenizerTrainConfig)
    tokenizer = run(cfg)
    print(f"wrote {cfg.out} ({tokenizer.vocab_size} tokens)")
    return 0


def cmd_generate(argv: Sequence[str]) -> int:
    from seqgen.inference import load
    from seqgen.tasks import GeneratesFiles, task_class

    if any(a in ("-h", "--help") for a in argv):
        owner = _option_value(argv, "--task")  # `--task music --help` shows its options
    else:
        owner = _checkpoint_task(argv)
    task = task_class(owner) if owner is not None else None
    if task is not None and issubclass(task, GeneratesFiles):  # its own inputs and outputs
        return task.generate_cli(list(argv))
    parser = argparse.ArgumentParser(
        prog="seqgen generate",
        description="Sample from a checkpoint (music: see seqgen generate --task music --help).",
    )
    parser.add_argument("--ckpt", required=True, help="Checkpoint or run directory.")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="",
                        help="Text to continue, translate, summarize (default: none).")  # fmt: skip
    prompt.add_argument("--prompt-file", help="Read the prompt from this UTF-8 file.")
    parser.add_argument("--task", default=None, help="Expected task (default: the checkpoint's).")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Default: the task's.")
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy (default: the task's, 0.8 for text).")  # fmt: skip
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None,
                        help="Never repeat an n-gram of new tokens (default: task).")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=1, help="Samples, as one batch.")
    parser.add_argument("--mbr-samples", type=int, default=1, metavar="N",
                        help="Minimum Bayes risk: sample N outputs (with --beams 1 and "
                             "--temperature > 0) and print their consensus, by the task's "
                             "similarity (summarization: ROUGE-2 + ROUGE-Lsum F1).")  # fmt: skip
    parser.add_argument("--beams", type=int, default=None,
                        help="Beam search with N beams (default: the task's).")  # fmt: skip
    parser.add_argument("--length-penalty", type=float, default=1.0, help="For beam search.")
    parser.add_argument("--stop", action="append", default=[], help="Stop string (repeatable).")
    parser.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Print text as it is produced (default: on for one sample).",
    )
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    args = parser.parse_args(argv)
    generator = load(args.ckpt, task=args.task, precision=args.precision)
    if args.prompt_file:
        from seqgen.data import read_text_file

        if not Path(args.prompt_file).is_file():
            raise SeqgenError(f"{args.prompt_file}: no such file")
        args.prompt = read_text_file(Path(args.prompt_file))
    given = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                 num_beams=args.beams, no_repeat_ngram_size=args.no_repeat_ngram_size)  # fmt: skip
    options = {
        **dict(min_new_tokens=args.min_new_tokens, top_k=args.top_k, top_p=args.top_p,
               repetition_penalty=args.repetition_penalty, seed=args.seed,
               length_penalty=args.length_penalty, stop=args.stop),
        **generator.task.generation_defaults,
        **{k: v for k, v in given.items() if v is not None},
    }  # fmt: skip
    echo = args.prompt if generator.task.continues_prompt else ""
    if args.mbr_samples != 1:
        return _generate_mbr(generator, args, options, echo)
    try:
        if args.stream is not False and args.num_samples == 1:
            sys.stdout.write(echo)
            for piece in generator.stream(args.prompt, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        if args.stream:
            raise SeqgenError("--stream prints one sample; drop --num-samples or use --no-stream")
        outputs = generator.generate(args.prompt, num_samples=args.num_samples, **options)
    except ValueError as err:
        raise SeqgenError(str(err)) from None
    for n, text in enumerate(outputs if args.num_samples > 1 else [outputs]):
        if args.num_samples > 1:
            print(f"--- sample {n + 1}")
        print(echo + text)
    return 0


def _generate_mbr(generator: Any, args: argparse.Namespace, options: dict, echo: str) -> int:
    """`seqgen generate --mbr-samples N`: print the consensus of N samples."""
    from seqgen.tasks import HasMBR

    task = generator.task
    if not isinstance(task, HasMBR):
        raise SeqgenError(f"--mbr-samples: the {task.name} task has no similarity to choose by")
    if args.mbr_samples < 2 or args.num_samples != 1 or args.stream or args.stop:
        raise SeqgenError("--mbr-samples N needs N >= 2, and no --num-samples, --stream, --stop")
    if options.get("num_beams", 1) > 1 or not options.get("temperature", 1.0) > 0:
        raise SeqgenError("--mbr-samples draws samples: give --beams 1 and --temperature > 0")
    options.pop("stop", None)
    output = generator.generate_mbr([args.prompt], samples=args.mbr_samples,
                                    similarity=task.mbr_similarity(), **options)[0]  # fmt: skip
    print(echo + output)
    return 0


def cmd_info(argv: Sequence[str]) -> int:
    from seqgen import checkpoint
    from seqgen.config import PRESETS, ModelConfig
    from seqgen.model import GPT

    parser = argparse.ArgumentParser(prog="seqgen info", description="Parameter tally of a model.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="Checkpoint or run directory.")
    source.add_argument("--model", choices=sorted(PRESETS), help="Model preset.")
    args = parser.parse_args(argv)
    if args.ckpt:
        config = ModelConfig.from_dict(checkpoint.read_meta(checkpoint.resolve(args.ckpt))["model"])
    else:
        config = ModelConfig.from_preset(args.model)
    rows = parameter_tally(GPT(config))
    print(json.dumps(config.to_dict()))
    width = max(len(name) for name, _ in rows)
    for name, count in rows:
        print(f"{name:<{width}}  {count:>14,}")
    return 0


def parameter_tally(model) -> list[tuple[str, int]]:
    """Parameters by component, as the GPT-2 illustrations count them (tied head once)."""
    t = model.transformer
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    rows = [("token embedding (wte, tied lm_head)", count(t.wte))]
    if "wpe" in t:
        rows.append(("position embedding (wpe)", count(t.wpe)))
    for i, block in enumerate(t.h):
        rows.append((f"block {i} attention (c_attn, c_proj)", count(block.attn)))
        rows.append((f"block {i} MLP (c_fc, c_proj)", count(block.mlp)))
        rows.append((f"block {i} LayerNorms (ln_1, ln_2)", count(block.ln_1) + count(block.ln_2)))
    rows.append(("final LayerNorm (ln_f)", count(t.ln_f)))
    rows.append(("total", model.num_params()))
    return rows


def _print_table(title: str, values: dict) -> None:
    print(f"\n{title}")
    width = max(len(k) for k in values)
    for key, value in values.items():
        shown = (
            f"{value:,.4f}"
            if isinstance(value, float)
            else (f"{value:,}" if isinstance(value, int) else str(value))
        )
        print(f"  {key:<{width}}  {shown}")


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "pretrain": (partial(cmd_train, "pretrain"),
                 "train from scratch: a text LM, or a task's corpus (--task music)"),
    "finetune": (partial(cmd_train, "finetune"),
                 "fine-tune a checkpoint on a task, or train one from scratch"),
    "evaluate": (cmd_evaluate, "score a checkpoint or a system's outputs on a task"),
    "generate": (cmd_generate, "sample from a checkpoint"),
    "data": (cmd_data, "build a task's dataset (e.g. seqgen data wikisum)"),
    "info": (cmd_info, "parameter tally of a checkpoint or preset"),
    "tokenizer": (cmd_tokenizer, "train a SentencePiece tokenizer (seqgen tokenizer train)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        from seqgen import __version__

        print(f"seqgen {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
        print(f"usage: seqgen <command> [--help] ... | seqgen --version\n\ncommands:\n{lines}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=os.environ.get("SEQGEN_LOG", "INFO"), format="%(message)s")
    command, _ = COMMANDS[argv[0]]
    try:
        return command(argv[1:])
    except SeqgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
