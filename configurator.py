"""
The command line of every script in the project (after nanoGPT's configurator.py): `--key=value`
flags typed by their defaults, `key = value` config files, subcommands, and the one wrapper that
turns expected failures into one line and an exit code.

    OPTIONS = {"n": (1, "samples per problem"), "out": ("samples.jsonl", "where they go")}
    def main(argv):
        a = configurator.parse(argv, OPTIONS, __doc__)   # a.n, a.out
    if __name__ == "__main__":
        configurator.cli(main)

The convention, the same in every script:
- `--key=value` with underscores; `--key value` and `--key` alone are errors (a boolean is
  `--key=True|False`);
- every key has a default, whose type the value must have (`None` defaults name their type), and a
  help line; `--help` prints the script's docstring and every key with its default and help;
- an unknown key is one line naming the closest known key;
- bad input raises UserError: one line `script.py: error: ...` and exit 2; a failure while running
  (a full disk, a dead server) raises RunError: one line and exit 1; Ctrl-C: one line and exit 130.
  Never a traceback.
"""

import ast
import difflib
import io
import os
import re
import signal
import sys
import tokenize
from pathlib import Path
from types import SimpleNamespace


class UserError(Exception):
    """Bad input (a flag, a file, a setting): one line, exit 2."""


class RunError(Exception):
    """A failure while running (a full disk, an unreachable server): one line, exit 1."""


# -----------------------------------------------------------------------------
# Options: {key: (default, help)} or {key: (default, help, type)} where the default is None

def parse(argv, options, doc="", args=None):
    """The options' values from `--key=value` flags (defaults for the rest) as a namespace. `args`
    names the positional arguments in the help ("SAMPLES", "[CONFIG ...]"); they come back as
    `.args` (none allowed without it). `--help` prints `doc` and the keys, and exits."""
    flags, positional = split_argv(argv, options, doc, args)
    if positional and not args:
        raise UserError(f"unexpected argument {positional[0]!r}: options are --key=value")
    return SimpleNamespace(**{**{k: spec[0] for k, spec in options.items()}, **flags},
                           args=positional)


def split_argv(argv, options, doc="", args=None):
    """({key: typed value} of the flags given, [positional arguments]); `--help` prints the help and
    exits."""
    if any(a in ("-h", "--help") for a in argv):
        print_help(options, doc, args)
        sys.exit(0)
    flags, positional = {}, []
    for arg in argv:
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        key, eq, raw = arg[2:].partition("=")
        check_key(key, options, "the command line")
        if not eq:
            raise UserError(f"expected --key=value, got {arg!r} (e.g. --{key}={options[key][0]!r})")
        flags[key] = convert(key, raw, options[key])
    return flags, positional


def convert(key, raw, spec):
    """A flag's text as the type of the key's default (or the type named for a None default)."""
    default = spec[0]
    kind = spec[2] if len(spec) > 2 else type(default)
    if default is None and raw in ("", "None"):
        return None
    if kind is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
    else:
        try:
            return kind(raw)
        except ValueError:
            pass
    raise UserError(f"--{key}={raw}: expected {kind.__name__}, e.g. --{key}={default!r}")


def check_key(key, options, where):
    if key not in options:
        positive = key.removeprefix("no_")
        if positive != key and isinstance(options.get(positive, (None,))[0], bool):
            # booleans are named in the positive: --no_x=True would read as a double negative
            raise UserError(f"--{key} is now --{positive}=True|False (--{key}=True is "
                            f"--{positive}=False)")
        close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
        hint = (f"; did you mean --{close[0]}?" if close
                else "; run with --help for the list of keys")
        raise UserError(f"unknown key {key!r} in {where}{hint}")


def print_help(options, doc, args=None):
    print(doc.strip() + "\n" if doc else "", end="")
    if args:
        print(f"\narguments: {args}")
    if not options:
        return
    print("\nkeys (--key=default: what it does):")
    shown = {k: f"--{k}={spec[0]!r}" for k, spec in options.items()}
    width = min(34, max(map(len, shown.values())))
    for k, spec in options.items():
        lines = spec[1].splitlines() or [""]
        pad = "\n" + " " * (width + 4)
        print(f"  {shown[k]:<{width}}  {pad.join(lines)}")


def options_from_globals(values, path):
    """train.py's style: the settings are module globals, each with a `# help` comment on its line
    (continued on comment-only lines below it). -> {key: (value, help)} in the order of the file."""
    source = Path(path).read_text(encoding="utf-8")
    comments = {}
    for t in tokenize.generate_tokens(io.StringIO(source).readline):
        if t.type == tokenize.COMMENT:
            comments[t.start[0]] = (t.start[1], t.string.lstrip("#").strip())
    helps, lines = {}, source.splitlines()
    for lineno, line in enumerate(lines, 1):
        m = re.match(r"(\w+) = ", line)
        if not (m and m[1] in values and lineno in comments) or m[1] in helps:
            continue
        column, text = comments[lineno]
        more = lineno + 1
        while (more in comments and comments[more][0] == column
               and not lines[more - 1][:column].strip()):
            # a comment continued on the next line, aligned under it
            text += " " + comments[more][1]
            more += 1
        helps[m[1]] = text
    return {k: (v, helps.get(k, "")) for k, v in values.items()}


def read_config_file(path, options):
    """`key = literal` lines of a Python file (no code is run), checked like --key=value ->
    {key: value}."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    except OSError as e:
        raise UserError(f"config file {path}: {e.strerror}")
    except (SyntaxError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path}: not valid Python ({e})")
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            raise UserError(f"config file {path}, line {node.lineno}: only `key = value` lines "
                            "are allowed")
        key = node.targets[0].id
        check_key(key, options, path)
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            raise UserError(f"config file {path}, line {node.lineno}: {key} must be a literal "
                            "(number, string, bool)")
        default = options[key][0]
        if isinstance(default, float) and type(value) is int:
            value = float(value)
        if type(value) is not type(default):
            raise UserError(f"config file {path}, line {node.lineno}: {key} = {value!r} is "
                            f"{type(value).__name__}, expected {type(default).__name__}")
        values[key] = value
    return values


# -----------------------------------------------------------------------------
# Subcommands and exit codes

def pick_command(argv, commands, doc="", default=None):
    """(command name, the rest of argv) for `script.py COMMAND --key=value ...`; `commands` is
    {name: help}. Without a command, `default` runs (if any); `--help` before a command lists the
    commands."""
    if argv and argv[0] in commands:
        return argv[0], argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(doc.strip())
        print("\ncommands (COMMAND --help for each one's keys):")
        width = max(map(len, commands))
        print("\n".join(f"  {name:<{width}}  {text}" for name, text in commands.items()))
        sys.exit(0)
    if default is not None and (not argv or argv[0].startswith("--")):
        return default, argv
    got = f"unknown command {argv[0]!r}" if argv else "no command given"
    close = difflib.get_close_matches(argv[0], commands, n=1) if argv else []
    raise UserError(f"{got}{f'; did you mean {close[0]}?' if close else ''}; choose one of "
                    f"{', '.join(commands)} (--help lists them)")


def cli(main, argv=None, prog=None):
    """Run main(argv) with every expected failure as one line on stderr: UserError (and
    FileNotFoundError) exits 2, RunError and any other OSError 1, Ctrl-C 130 (a KeyboardInterrupt's
    own message, if any, says what was kept). A reader that closed our output (`| head`) ends us
    quietly, 141 as a SIGPIPE would. Under torchrun only rank 0 speaks. Ctrl-C ends with os._exit:
    call cli only from __main__."""
    prog = prog or Path(sys.argv[0]).name
    argv = sys.argv[1:] if argv is None else argv
    quiet = os.environ.get("RANK", "0") != "0"

    def say(msg):
        if not quiet:
            print(f"{prog}: {msg}", file=sys.stderr, flush=True)

    try:
        main(argv)
        # the work is done and written: a Ctrl-C while the interpreter exits (seconds, once torch is
        # loaded) would only print a traceback from an exit handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except BrokenPipeError:
        # the reader has all it wanted: no error, and no second one when Python flushes stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except (UserError, FileNotFoundError) as e:
        # a path the user gave that is not there is bad input too
        say(f"error: {e}")
        sys.exit(2)
    except (RunError, OSError) as e:
        say(f"error: {e}")
        sys.exit(1)
    except KeyboardInterrupt as e:
        say(f"interrupted{f'; {e}' if str(e) else ''}")
        sys.stdout.flush()
        # everything is closed by now; skip the interpreter's shutdown, which takes seconds once
        # torch is loaded
        os._exit(130)
