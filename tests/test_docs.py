"""The docs cannot drift from the code: every shell command in the markdown docs (fenced blocks and inline code) and
in the launch scripts that runs a project entry point uses only flags that the entry point's own ``--help`` lists,
names files that exist, and sets only environment variables the launch script it runs reads.

Commands are split the way the shell would (line continuations, ``;``/``&&``/``|``/newlines, comments, quoted
strings such as ``sbatch --wrap "python ..."`` parsed as commands of their own). Only the words after the entry point
are its flags, so ``torchrun``/``srun``/``sbatch`` options and ``VAR=value`` prefixes before it are not checked
against it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "DATASET.md", "PRETRAIN.md", "FINETUNE.md", "BENCHMARKS.md"]
STAGE_SCRIPTS = sorted((REPO / "scripts").glob("*/*.sh"))
SCRIPTS = sorted((REPO / "scripts").glob("*.sh")) + sorted((REPO / "benchmarks").glob("*.sh")) + STAGE_SCRIPTS
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`((?:\w+=\S*\s+)*(?:python3?|torchrun|srun|sbatch|bash)\s[^`\n]*)`")  # inline commands
SEPARATORS = set(";&|\n")  # a punctuation token holding one of these ends a command; (, ), <, > do not
ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=")
READ_VARIABLE = re.compile(r"\$\{?([A-Za-z_]\w*)")
LAUNCHERS = {"python", "python3", "torchrun", "srun", "deepspeed", "launch"}  # launch: scripts/launch.sh
MODULE_LAUNCHERS = {"torch.distributed.launch", "torch.distributed.run"}  # python -m X ENTRY.py ...


@dataclass
class Command:
    source: str
    words: list[str]
    entry: str | None = None  # "run_x.py" or "-m package.module"
    flags: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)  # the words after the entry point


def shell_texts(path: Path) -> list[str]:
    """Shell code of a file: a script whole; of markdown, the fenced shell blocks and the inline code spans."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".sh":
        return [text]
    blocks = [body for lang, body in FENCE.findall(text) if lang in SHELL_FENCES]
    prose = FENCE.sub("", text)
    return blocks + INLINE.findall(prose)


def strip_comments(text: str) -> str:
    """Shell text without comments: a # starting a word outside quotes, to the end of its line."""
    out, quote, i = [], "", 0
    while i < len(text):
        char = text[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "\\":
            out.append(text[i:i + 2])
            i += 2
            continue
        elif char == "#" and (i == 0 or text[i - 1] in " \t\n;&|("):
            i = text.find("\n", i)
            if i < 0:
                break
            continue
        out.append(char)
        i += 1
    return "".join(out)


def split_commands(text: str) -> list[list[str]]:
    """Simple commands of a shell text, as word lists (quotes removed, comments dropped)."""
    lexer = shlex.shlex(strip_comments(text).replace("\\\n", " "), posix=True, punctuation_chars="();<>|&\n")
    lexer.whitespace, lexer.whitespace_split, lexer.commenters = " \t\r", True, ""
    commands, words = [], []
    for token in lexer:
        if set(token) <= set(lexer.punctuation_chars):
            if SEPARATORS & set(token):
                commands.append(words)
                words = []
        else:
            words.append(token)
    return [c for c in [*commands, words] if c]


def is_project_module(module: str) -> bool:
    top = REPO / module.split(".")[0]
    return top.is_dir() or top.with_suffix(".py").is_file()


def parse_commands(text: str, source: str) -> list[Command]:
    """Every command in ``text``, quoted strings with spaces parsed again as commands of their own."""
    found = []
    for words in split_commands(text):
        command = Command(source, words)
        found.append(command)
        launched = external = False  # python, torchrun, ... seen; python -m running another package
        for i, word in enumerate(words):
            launched = launched or Path(word).name in LAUNCHERS
            if " " in word:
                with contextlib.suppress(ValueError):  # not shell code (an awk program, a message)
                    found += parse_commands(word, source)
            elif not launched or command.entry is not None or external:
                continue
            elif word.endswith(".py") and not word.startswith("-"):
                command.entry = word.removeprefix("./")
                command.argv = words[i + 1:]
            elif word == "-m" and i + 1 < len(words) and is_project_module(words[i + 1]):
                command.entry = f"-m {words[i + 1]}"
                command.argv = words[i + 2:]
            elif word == "-m" and i + 1 < len(words) and words[i + 1] not in MODULE_LAUNCHERS:
                external = True  # another package's module (pytest, pip): its arguments are not ours to check
        command.flags = [f.split("=")[0] for f in command.argv if re.match(r"^--?[A-Za-z]", f)]
    return found


def help_flags(help_text: str) -> set[str]:
    """Option strings of an argparse --help: the lines of the option lists, indented by two spaces."""
    flags = set()
    for line in help_text.splitlines():
        if re.match(r"^ {2}-", line):
            head = re.split(r"\s{2,}", line.strip())[0]
            flags |= set(re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", head))
    return flags


# Runs `python ENTRY --help` for every entry point in one interpreter (the training ones share one torch import).
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
texts = {}
for entry in sys.argv[1:]:
    sys.argv, out = [entry, "--help"], io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        if entry.startswith("-m "):
            runpy.run_module(entry[3:], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(entry, run_name="__main__")
    texts[entry] = out.getvalue()
print(json.dumps(texts))
"""


def run_help(entries: set[str]) -> dict[str, set[str]]:
    """Flags of every entry point (a file or ``-m module`` of this repository) from its --help."""
    entries = sorted(e for e in entries if e.startswith("-m ") or (REPO / e).is_file())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-c", HELP_RUNNER, *entries], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    flags = {}
    for entry, text in json.loads(result.stdout.splitlines()[-1]).items():
        flags[entry] = help_flags(text)
        assert "--help" in flags[entry], f"python {entry} --help lists no options:\n{text[-2000:]}"
    return flags


def script_closure(script: Path) -> list[str]:
    """The code (comments dropped) of a launch script, of the scripts it runs or sources, and so on."""
    texts, todo, seen = [], [script], set()
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        texts.append(strip_comments(path.read_text(encoding="utf-8")))
        todo += [REPO / other for other in re.findall(r"scripts/[\w/]+\.sh", texts[-1])]
    return texts


def check_script_call(shown: str, words: list[str], script: str, flags: dict[str, set[str]]) -> list[str]:
    """``VAR=value ... bash|sbatch scripts/x.sh``: the script exists and reads every VAR; EXTRA_ARGS holds flags of
    the entry point the script runs."""
    if not (REPO / script).is_file():
        return [f"{shown}: no script {script}"]
    texts = script_closure(REPO / script)
    known = {name for text in texts for name in READ_VARIABLE.findall(text)}
    entries = {c.entry for text in texts for c in parse_commands(text, script) if c.entry}
    allowed = set().union(*(flags.get(entry, set()) for entry in entries))
    errors = []
    for word in words:
        if match := ASSIGNMENT.match(word):
            name, value = match.group(1), word[match.end():]
            if name not in known:
                errors.append(f"{shown}: {script} does not read ${name}")
            if name == "EXTRA_ARGS":
                extra = [f.split("=")[0] for f in value.split() if re.match(r"^--?[A-Za-z]", f)]
                errors += [f"{shown}: {sorted(entries)} ({script}) have no flag {f}" for f in extra if f not in allowed]
    return errors


def check(commands: list[Command], flags: dict[str, set[str]]) -> list[str]:
    errors = []
    for command in commands:
        shown = f"{command.source}: `{' '.join(command.words)[:160]}`"
        if command.entry is not None:
            if command.entry not in flags:
                errors.append(f"{shown}: no entry point {command.entry}")
                continue
            known = flags[command.entry]
            errors += [f"{shown}: {command.entry} has no flag {f}" for f in command.flags if f not in known]
        for i, word in enumerate(command.words):
            if word.startswith("scripts/") and word.endswith(".sh"):
                errors += check_script_call(shown, command.words[:i], word, flags)
    return errors


def all_commands() -> dict[str, list[Command]]:
    commands = {}
    for path in [REPO / doc for doc in DOCS] + SCRIPTS:
        name = str(path.relative_to(REPO))
        commands[name] = [c for text in shell_texts(path) for c in parse_commands(text, name)]
    return commands


COMMANDS = all_commands()


@pytest.fixture(scope="module")
def entry_flags() -> dict[str, set[str]]:
    entries = {c.entry for commands in COMMANDS.values() for c in commands if c.entry}
    return run_help(entries | {"run_mofo_pretraining.py", "-m motion_detection.extract_boxes"})


@pytest.mark.parametrize("source", sorted(COMMANDS))
def test_commands_use_only_existing_flags(source, entry_flags):
    assert check(COMMANDS[source], entry_flags) == []


# Parses each [entry, argv] of a JSON list with the entry point's own parser, stopping right after it parsed:
# prints the argparse error of each command that does not parse (None for those that do).
PARSE_RUNNER = """
import argparse, contextlib, io, json, runpy, sys
class Parsed(Exception):
    "Raised once the entry point's parser has parsed: nothing runs."
def stop_after(parse):
    def parse_and_stop(self, *args, **kwargs):
        parse(self, *args, **kwargs)
        raise Parsed
    return parse_and_stop
argparse.ArgumentParser.parse_args = stop_after(argparse.ArgumentParser.parse_args)
errors = []
for entry, argv in json.loads(sys.stdin.read()):
    sys.argv, err = [entry.removeprefix("-m "), *argv], io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if entry.startswith("-m "):
                runpy.run_module(entry[3:], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(entry, run_name="__main__")
        errors.append("ran without parsing its arguments")
    except Parsed:
        errors.append(None)
    except SystemExit:
        errors.append(err.getvalue().strip().splitlines()[-1])
print(json.dumps(errors))
"""
PLACEHOLDERS = ("$", "...", "*", "<")  # marks of words that stand for a value the reader fills in
PLACEHOLDER_WORDS = {"N", "DIR", "CSV", "VIDEO", "BOXES", "GT", "CHECKPOINT", "OUT_DIR"}  # and these, in the docs


def fills_in(word: str) -> bool:
    return any(mark in word for mark in PLACEHOLDERS) or word.split("/")[0] in PLACEHOLDER_WORDS


def test_documented_commands_parse_with_their_values():
    """Flag values too, not only names: a typo'd choice (--mask_type motoin) or a malformed number (0,9) in a
    documented command fails here, as it would for the reader who copies it. Commands with shell variables or
    placeholders, and bare entry points (named in a table), are left to the flag-name check."""
    commands = [c for source in DOCS for c in COMMANDS[source] if c.entry and c.argv and "--help" not in c.argv
                and (c.entry.startswith("-m ") or (REPO / c.entry).is_file()) and not any(map(fills_in, c.argv))]
    assert len(commands) >= 20, len(commands)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run([sys.executable, "-c", PARSE_RUNNER], cwd=REPO, env=env, capture_output=True, text=True,
                            input=json.dumps([[c.entry, c.argv] for c in commands]), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.splitlines()[-1])
    failed = [f"{c.source}: {c.entry} {' '.join(c.argv)[:160]}: {error}" for c, error in zip(commands, errors,
                                                                                            strict=True) if error]
    assert not failed, failed
    typo = Command("typo", [], "run_mofo_pretraining.py", argv=["--mask_type", "motoin", "--mask_ratio", "0,9"])
    result = subprocess.run([sys.executable, "-c", PARSE_RUNNER], cwd=REPO, env=env, capture_output=True, text=True,
                            input=json.dumps([[typo.entry, typo.argv]]), timeout=300)
    assert "invalid choice: 'motoin'" in json.loads(result.stdout.splitlines()[-1])[0]


def test_the_tiny_cpu_pretraining_example_runs_as_written(tmp_path):
    """PRETRAIN.md's tiny CPU run, the one a reader tries first: its commands as written (only the output folder
    ``tiny/`` moved to a temp folder) make data, boxes and a checkpoint."""
    text = (REPO / "PRETRAIN.md").read_text(encoding="utf-8")
    block = next(body for lang, body in FENCE.findall(text) if "--warmup_epochs 0" in body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace("tiny/", f"{tmp_path}/")], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "pretrain" / "checkpoint-0.pth").is_file() and any((tmp_path / "boxes").glob("*.json"))
    warnings = [line for line in result.stdout.splitlines() if "warning" in line.lower()]
    # the one the text explains (DIS finds no motion in the slow approach clip); none else, e.g. motion masking at
    # the tube rate (0.75/0.75)
    assert len(warnings) == 1 and "have no motion box in any frame (000004.mp4)" in warnings[0], result.stdout
    assert "(`000004.mp4`), which the extraction's summary names in a warning" in text


def test_every_doc_and_stage_script_runs_entry_points():
    """Guards against a parser that silently finds nothing."""
    stage_scripts = {str(s.relative_to(REPO)) for s in STAGE_SCRIPTS}
    for source, commands in COMMANDS.items():
        if source in DOCS or source in stage_scripts:  # a stage script may run another one instead
            runs = any((c.entry and c.flags) or (stage_scripts - {source}) & set(c.words) for c in commands)
            assert runs, f"{source}: no entry-point command found"
    entries = {c.entry for commands in COMMANDS.values() for c in commands}
    assert {"run_mofo_pretraining.py", "run_mofo_finetuning.py", "-m motion_detection.extract_boxes"} <= entries


SNIPPET = """
python run_mofo_pretraining.py --mask_type tube   # a comment --not_a_flag
GPUS=8 EXTRA_ARGS="--seed 3 --precision=fp16" bash scripts/ssv2/finetune_plain.sh
NOT_READ_BY_IT=1 EXTRA_ARGS="--seed 3 --no_such_flag" sbatch --nodes=2 scripts/ssv2/pretrain.sh
MASTER_PORT=1234 torchrun --nproc_per_node 8 --nnodes 2 run_mofo_pretraining.py \\
    --mask_type motion --mask_ratio=0.9 \\
    --made_up_flag 3 > log.txt; echo --also_not_a_flag
sbatch --array=0-63 --cpus-per-task=16 --wrap \\
  "python -m motion_detection.extract_boxes --video_list a.csv --output_dir b --flwo dis"
python run_mofo_nonexistent.py --x 1 | tee out.txt
ruff check tests/test_docs.py --not-an-entry-point
timeout 80 python3 -m pytest -q -k cuda tests/test_train_step.py --not-ours
python -m torch.distributed.launch --nproc_per_node 8 run_mofo_pretraining.py --mask_type tube --no_such_launch_flag
"""


def test_the_check_catches_made_up_flags_entry_points_and_variables(entry_flags):
    commands = parse_commands(SNIPPET, "snippet")
    errors = check(commands, entry_flags)
    expected = ["does not read $NOT_READ_BY_IT", "have no flag --no_such_flag",
                "run_mofo_pretraining.py has no flag --made_up_flag",
                "-m motion_detection.extract_boxes has no flag --flwo", "no entry point run_mofo_nonexistent.py",
                "run_mofo_pretraining.py has no flag --no_such_launch_flag"]
    assert len(errors) == len(expected) and all(e in error for e, error in zip(expected, errors, strict=True)), errors
    assert not any(c.entry for c in commands if "pytest" in c.words)  # another package's module: not checked
    commented, launched, _ = [c.flags for c in commands if c.entry == "run_mofo_pretraining.py"]
    assert commented == ["--mask_type"]
    assert launched == ["--mask_type", "--mask_ratio", "--made_up_flag"]  # not torchrun's, not echo's
    assert help_flags("usage: x [-h]\n\ndescription mentions --desc_flag\n\noptions:\n  -h, --help  help\n"
                      "  --a A, --alias A\n                        text --not_this\n") == {"-h", "--help", "--a",
                                                                                           "--alias"}


def test_help_shows_the_usage_example_as_written_and_every_default():
    """The entry points' ``--help``: the docstring's command with its line continuations (a plain docstring would
    join them into one line of spaces) and each flag's default, flags without help text included."""
    result = subprocess.run([sys.executable, "run_mofo_pretraining.py", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--data_root videos/ \\\n        --box_dir boxes/" in result.stdout
    assert re.search(r"--epochs EPOCHS\s+\(default: 800\)", result.stdout)
    assert re.search(r"--last_ckpt_freq LAST_CKPT_FREQ\s+also a rolling .*\(default: 1\)", result.stdout, re.S)
    assert "(default: None)" not in result.stdout and "(default: )" not in result.stdout
    # on/off switches: "--no_auto_resume (default: True)" would read as "off by default"
    assert re.search(r"--no_auto_resume\n", result.stdout) and "(default) (default" not in result.stdout


# A machine's folder: any absolute one but the system's (/dev/null, /proc/...), or a data folder reached from a home
# (~/) or by climbing out of the repository (../../mnt/...: the release's own form).
ABSOLUTE_PATH = re.compile(
    r"""(?:^|[\s=(\[,:])["']?/(?!(?:dev|proc|sys|usr|bin|etc)/)[\w.-]+/|(?:\.\./|~/)(?:home|mnt|scratch|data|"""
    r"""datasets|nfs|gpfs|work|users|storage|cluster|raid|lustre|fsx|beegfs|ceph|projects|project|group|shared|"""
    r"""media|opt|srv|root|local)/""", re.IGNORECASE)
FIXED_DEVICE = re.compile(r"""set_device\(\s*\d|["']cuda:\d""")  # the release's torch.cuda.set_device(3)


def test_no_hard_coded_absolute_paths():
    """The release hard-coded its data and output folders. Here every path comes from a flag or a variable: no
    source file or script names a folder of a particular machine, and no entry point's default is absolute."""
    files = subprocess.run(["git", "ls-files", "*.py", "*.sh", "Makefile"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    found = [f"{name}:{number}: {line.strip()}" for name in files if not name.startswith("tests/")
             for number, line in enumerate((REPO / name).read_text().splitlines(), 1)
             if ABSOLUTE_PATH.search(line) or FIXED_DEVICE.search(line)]
    assert not found, found
    for release_kind in ('default="/scratch/ssv2/videos"', 'root = "../../mnt/welles/scratch/ssv2"',
                         "DATA=~/datasets/ssv2", "torch.cuda.set_device(3)", 'device = "cuda:1"',
                         'BOX_JSON = "/raid/mona/EPIC_100_BB_smooth_train.json"', "root='/Users/me/ssv2'",
                         'FLOW = "/data1/mona/flow"', "out='/tmp/mona/out'"):
        assert ABSOLUTE_PATH.search(release_kind) or FIXED_DEVICE.search(release_kind), release_kind
    for system_or_relative in ('open("/proc/cpuinfo")', "2> /dev/null", '"$DATA"/videos/0.mp4', 'cd "$0"/../..'):
        assert not ABSOLUTE_PATH.search(system_or_relative), system_or_relative
    import export_hf
    import run_mofo_finetuning
    import run_mofo_gradcam
    import run_mofo_pretraining
    import run_mofo_vis
    from motion_detection import extract_boxes
    parsers = [module.get_args_parser() for module in (run_mofo_pretraining, run_mofo_finetuning, run_mofo_gradcam,
                                                        run_mofo_vis, export_hf)] + [extract_boxes.build_parser()]
    defaults = [(action.dest, action.default) for parser in parsers for action in parser._actions
                if isinstance(action.default, str) and (os.path.isabs(action.default)
                                                        or action.default.startswith(("~", "..")))]
    assert not defaults, defaults
