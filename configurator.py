"""
The one config mechanism shared by every script (train.py, sample.py, bench.py, load_gpt2.py), with the two
things they all do next: tell a person about a mistake, and pick the device and dtype.

A script keeps its defaults as plain names in a dict; the command line can name config files and
`--key=value` overrides, applied left to right:

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

A config file holds simple assignments (`name = literal`). It is parsed with `ast`, never executed, so a
config file cannot run code. Values are Python literals; a bare word that is no literal is a string
(`--init_from=gpt2`). Every value is type-checked against its default: an int is fine for a float, a
default of None accepts anything.

Mistakes raise ConfigError with one line that names the key, the value and the fix. Every mistake a
person can fix is a UserError (ConfigError, and load_gpt2's LoadError and DownloadError): scripts print it
as one line and exit 1 (`exit_with_error`), never as a traceback.
"""

import ast
import difflib
import glob
import io
import os
import sys
import tokenize

import torch


class UserError(Exception):
    """A mistake a person can fix: its message is one line that names the value and the fix."""


class ConfigError(UserError, ValueError):
    pass


def exit_with_error(message):
    """One clear line for a person, exit code 1, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _literal(text, key):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as gpt2 or cuda:1 is a string
    except (RecursionError, MemoryError):
        raise ConfigError(f"the value of '{key}' is nested too deeply to read") from None


def _check(key, value, defaults, where):
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults.keys(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{where}unknown config key '{key}'{hint}")
    default = defaults[key]
    if default is None or value is None:
        return value
    expected = type(default)
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is not expected:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ConfigError(f"{where}'{key}' must be {expected.__name__}, got {shown} ({type(value).__name__})")
    return value


def read_config_file(path, defaults):
    """The assignments of a config file, checked against defaults."""
    if not os.path.isfile(path):
        near = glob.glob(os.path.join(os.path.dirname(path) or ".", "*.py"))
        near += glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "*.py"))
        close = difflib.get_close_matches(path, [os.path.relpath(p) for p in near], n=1, cutoff=0.6)
        raise ConfigError(f"config file '{path}' not found" + (f" (did you mean '{close[0]}'?)" if close else ""))
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        tree = ast.parse(source, filename=path)
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not text (not UTF-8): a config file holds 'name = literal' lines") \
            from None
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid Python: {e.msg}") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"config file '{path}' is nested too deeply to read") from None
    values = {}
    for node in tree.body:
        where = f"{path}:{node.lineno}: "
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(f"{where}a config file may only hold 'name = literal' assignments")
        try:
            value = ast.literal_eval(node.value)
        except (RecursionError, MemoryError):
            raise ConfigError(f"{where}the value of '{node.targets[0].id}' is nested too deeply to read") from None
        except ValueError:
            raise ConfigError(f"{where}the value of '{node.targets[0].id}' is not a literal "
                              f"(a config file cannot run code)") from None
        values[node.targets[0].id] = _check(node.targets[0].id, value, defaults, where)
    return values


def load_config(defaults, argv=None):
    """defaults updated by the config files and --key=value overrides in argv (sys.argv[1:] by default)."""
    config = dict(defaults)
    for arg in sys.argv[1:] if argv is None else argv:
        if arg in ("-h", "--help"):
            print_help(defaults)
            sys.exit(0)
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise ConfigError(f"'{arg}' needs a value: write --{key}=VALUE")
            config[key] = _check(key, _literal(text, key), defaults, "")
        else:
            config.update(read_config_file(arg, defaults))
    return config


def print_help(defaults):
    """Every key with its default and the comment written beside it in the script, one line each."""
    script = sys.argv[0]
    comments = default_comments(script) if script.endswith(".py") and os.path.isfile(script) else {}
    print(f"usage: python {os.path.basename(script)} [config_file.py ...] [--key=value ...]\n\nkeys and their defaults:")
    width = max(len(f"--{key}={value!r}") for key, value in defaults.items())
    for key, value in defaults.items():
        setting = f"--{key}={value!r}"
        print(f"  {setting:<{width}}  {comments[key]}" if key in comments else f"  {setting}")


def default_comments(path):
    """{key: the comment at the end of the line that sets its default} in a script's source."""
    with open(path, encoding="utf-8") as f:
        tokens = list(tokenize.generate_tokens(io.StringIO(f.read()).readline))
    comments, line_key = {}, {}
    for i, tok in enumerate(tokens[:-1]):
        if tok.type == tokenize.NAME and tokens[i + 1].string == "=" and tok.start[0] not in line_key:
            line_key[tok.start[0]] = tok.string  # the first `name =` of a line
        elif tok.type == tokenize.COMMENT and tok.start[0] in line_key:
            comments.setdefault(line_key[tok.start[0]], tok.string.lstrip("# "))
    return comments


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name):
    """The torch.device for name: 'auto' is cuda, then mps, then cpu; one this machine lacks is a ConfigError."""
    has = {"cpu": True, "cuda": torch.cuda.is_available(),
           "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if name == "auto":
        name = "cuda" if has["cuda"] else "mps" if has["mps"] else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={name!r} is no device: use auto, cpu, cuda, cuda:1 or mps") from None
    if device.type not in has:
        raise ConfigError(f"device={name!r} is not supported: use auto, cpu, cuda, cuda:1 or mps")
    if not has[device.type] or device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={name} is not available on this machine: use --device=auto (or cpu)")
    return device


def pick_dtype(name, device, generation=False):
    """The dtype name for device. 'auto' is bfloat16 on a CUDA device that supports it, and for generation also on
    a CPU with fast bfloat16 kernels (it reads every weight once per token: half the bytes, 1.5-2x the speed);
    else float32, which training on a CPU keeps."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported() or generation and device.type == "cpu" \
                and cpu_has_fast_bf16():
            return "bfloat16"
        return "float32"
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} must be auto, {', '.join(DTYPES)}")
    if name == "float16" and device.type == "cpu":
        raise ConfigError("dtype=float16 on a CPU is about 50x slower than float32: use float32 or bfloat16")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bfloat16: use dtype=float16")
    return name


def cpu_has_fast_bf16():
    """True when bfloat16 generation is fast on this CPU: with fbgemm (x86 with AVX2), whose float16 kernels
    model.py packs bfloat16 weights for, or with bfloat16 instructions (x86 AVX-512 BF16 or AMX, Arm BF16)."""
    from model import HAS_FP16_KERNEL
    if HAS_FP16_KERNEL:
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(f.read().split())
    except OSError:  # not Linux: assume not
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
