"""The one command-line convention (configurator.py) and the one atomic writer (files.py): typed --key=value flags,
one-line errors with their exit codes, help lines, config files, subcommands, and files that are whole or absent."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import configurator
from configurator import RunError, UserError
from files import atomic_write

REPO = Path(__file__).resolve().parent.parent
OPTIONS = {"n": (1, "samples per problem"), "temperature": (0.0, "0 = greedy"), "verify": (False, "run them"),
           "out": ("samples.jsonl", "where they go"), "timeout": (None, "seconds; default: per problem", float)}


def test_flags_are_typed_by_their_defaults():
    a = configurator.parse(["--n=3", "--temperature=0.5", "--verify=True", "--timeout=2.5"], OPTIONS)
    assert (a.n, a.temperature, a.verify, a.out, a.timeout, a.args) == (3, 0.5, True, "samples.jsonl", 2.5, [])
    assert configurator.parse(["--verify=false", "--timeout=None"], OPTIONS).verify is False
    assert configurator.parse([], OPTIONS).timeout is None
    assert configurator.parse(["a.jsonl", "--n=2"], OPTIONS, args="SAMPLES").args == ["a.jsonl"]


@pytest.mark.parametrize("argv, message", [
    (["--n", "3"], r"expected --key=value, got '--n'"),
    (["--verify"], r"expected --key=value, got '--verify'"),
    (["--tempreature=1"], r"unknown key 'tempreature' in the command line; did you mean --temperature\?"),
    (["--n=three"], r"--n=three: expected int, e.g. --n=1"),
    (["--verify=maybe"], r"--verify=maybe: expected bool"),
    (["stray"], r"unexpected argument 'stray'"),
    # booleans are named in the positive; the negative name says which key replaced it, and its sense
    (["--no_verify=True"], r"^--no_verify is now --verify=True\|False \(--no_verify=True is --verify=False\)$"),
    (["--no_out=x"], r"unknown key 'no_out'"),  # only a boolean has a negative
])
def test_bad_flags_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        configurator.parse(argv, OPTIONS)


def test_help_lists_every_key_with_its_whole_comment(tmp_path, capsys):
    script = tmp_path / "knobs.py"
    script.write_text("alpha = 1              # the first knob\n"
                      "beta = 'x'             # a comment that goes on\n"
                      "                       # on the next line\n"
                      "gamma = False\n")
    options = configurator.options_from_globals({"alpha": 1, "beta": "x", "gamma": False}, script)
    assert options == {"alpha": (1, "the first knob"), "beta": ("x", "a comment that goes on on the next line"),
                       "gamma": (False, "")}
    with pytest.raises(SystemExit) as e:
        configurator.parse(["--help"], options, "Doc line.")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Doc line.") and "--beta='x'" in out and "a comment that goes on on the next line" in out


def test_config_files_hold_literals_only(tmp_path):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text('"""A config."""\nn = 4\ntemperature = 1\n')
    assert configurator.read_config_file(good, OPTIONS) == {"n": 4, "temperature": 1.0}
    bad.write_text("import os\n")
    with pytest.raises(UserError, match="line 1: only `key = value` lines"):
        configurator.read_config_file(bad, OPTIONS)
    bad.write_text("n = 'four'\n")
    with pytest.raises(UserError, match="n = 'four' is str, expected int"):
        configurator.read_config_file(bad, OPTIONS)


def test_pick_command():
    commands = {"sample": "sample", "check": "check"}
    assert configurator.pick_command(["check", "x"], commands) == ("check", ["x"])
    assert configurator.pick_command(["--n=1"], commands, default="sample") == ("sample", ["--n=1"])
    with pytest.raises(UserError, match="unknown command 'chek'; did you mean check"):
        configurator.pick_command(["chek"], commands)
    with pytest.raises(UserError, match="no command given"):
        configurator.pick_command([], commands)


@pytest.mark.parametrize("body, code, line", [
    ("raise UserError('bad flag')", 2, "prog.py: error: bad flag"),
    ("open('/no/such/file')", 2, "prog.py: error: [Errno 2] No such file or directory: '/no/such/file'"),
    ("raise RunError('disk full')", 1, "prog.py: error: disk full"),
    ("raise KeyboardInterrupt('kept out/ckpt.pt')", 130, "prog.py: interrupted; kept out/ckpt.pt"),
])
def test_cli_maps_failures_to_one_line_and_an_exit_code(tmp_path, body, code, line):
    prog = tmp_path / "prog.py"
    prog.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport configurator\n"
                    f"from configurator import RunError, UserError\n"
                    f"def main(argv):\n    {body}\nconfigurator.cli(main)\n")
    r = subprocess.run([sys.executable, str(prog)], capture_output=True, text=True, timeout=60)
    assert r.returncode == code and r.stderr.strip() == line and r.stdout == ""


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`script.py | head -1`: the reader closes the pipe early; the writer stops without a word."""
    prog = tmp_path / "prog.py"
    prog.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport configurator\n"
                    "def main(argv):\n    for i in range(10**6):\n        print(i)\n"
                    "configurator.cli(main)\n")
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(prog))} | head -1"
    r = subprocess.run(f"{command}; echo ${{PIPESTATUS[0]}}", shell=True,
                       executable="/bin/bash", capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["0", "141"] and r.stderr == "", r


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "sub dir" / "result.json"
    atomic_write(path, '{"a": 1}')
    assert path.read_text() == '{"a": 1}'

    def dies_halfway(f):
        f.write(b'{"a": 2')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies_halfway)
    assert path.read_text() == '{"a": 1}' and os.listdir(path.parent) == ["result.json"]

    def disk_full(f):
        raise OSError(28, "No space left on device")
    with pytest.raises(RunError, match=r"cannot write .*result.json: No space left on device \(the previous "
                                       r"result.json, if any, is intact\)"):
        atomic_write(path, disk_full)
    assert path.read_text() == '{"a": 1}' and os.listdir(path.parent) == ["result.json"]
    atomic_write(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
