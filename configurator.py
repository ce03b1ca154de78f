"""
The one config mechanism shared by train.py and sample.py.

A script keeps its defaults as plain names in a dict; the command line can name config files and
`--key=value` overrides, applied left to right:

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

A config file holds simple assignments (`name = literal`). It is parsed with `ast`, never executed, so a
config file cannot run code. Values are Python literals; a bare word that is no literal is a string
(`--init_from=gpt2`). Every value is type-checked against its default: an int is fine for a float, a
default of None accepts anything.

Mistakes raise ConfigError with one line that names the key, the value and the fix; scripts print it
and exit 1 (see `exit_with_error`).
"""

import ast
import difflib
import os
import sys


class ConfigError(ValueError):
    pass


def exit_with_error(message):
    """One clear line for a person, exit code 1, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as gpt2 or cuda:1 is a string


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
        raise ConfigError(f"{where}'{key}' must be {expected.__name__}, got {value!r} ({type(value).__name__})")
    return value


def read_config_file(path, defaults):
    """The assignments of a config file, checked against defaults."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' not found")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid Python: {e.msg}") from None
    values = {}
    for node in tree.body:
        where = f"{path}:{node.lineno}: "
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(f"{where}a config file may only hold 'name = literal' assignments")
        try:
            value = ast.literal_eval(node.value)
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
            config[key] = _check(key, _literal(text), defaults, "")
        else:
            config.update(read_config_file(arg, defaults))
    return config


def print_help(defaults):
    script = os.path.basename(sys.argv[0])
    print(f"usage: python {script} [config_file.py ...] [--key=value ...]\n\nkeys and their defaults:")
    for key, value in defaults.items():
        print(f"  --{key}={value!r}")


def auto_device():
    """'cuda', then 'mps', then 'cpu': the best device this machine has."""
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def auto_dtype(device):
    """bfloat16 on a CUDA device that supports it, else float32."""
    import torch
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def cpu_computes_bf16():
    """True when this CPU has bfloat16 instructions (x86 AVX-512 BF16 or AMX, Arm BF16): then bf16 matmuls run
    natively instead of converting to float32, and bf16's halved bytes make memory-bound decoding ~2x faster."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(f.read().split())
    except OSError:  # not Linux: assume no
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def auto_generation_dtype(device):
    """auto_dtype, and bfloat16 on a CPU that computes it natively: generation reads every weight once per token,
    so half the bytes is nearly twice the speed. (Training on a CPU stays float32: see auto_dtype.)"""
    if device.startswith("cpu") and cpu_computes_bf16():
        return "bfloat16"
    return auto_dtype(device)
