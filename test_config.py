"""The config mechanism as train.py uses it: config files, --key=value overrides, and their mistakes."""

import glob
import os
import subprocess
import sys

import pytest
import torch

import train
from configurator import ConfigError, load_config, read_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def write(tmp_path, text, name='cfg.py'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(HERE, 'config', '*.py'))))
def test_every_shipped_config_file_is_valid_for_train(path):
    values = read_config_file(path, train.DEFAULTS)
    assert values, f"{path} sets nothing"
    config = load_config(train.DEFAULTS, [path])
    assert all(config[k] == v for k, v in values.items())


def test_files_and_overrides_apply_left_to_right(tmp_path):
    first = write(tmp_path, "'''a docstring'''\nbatch_size = 4\nn_layer = 3\n# a comment\n", 'a.py')
    second = write(tmp_path, "n_layer = 5\ninit_from = 'resume'\n", 'b.py')
    config = load_config(train.DEFAULTS, [first, second, '--batch_size=7', '--learning_rate=1', '--compile=False',
                                          '--init_from=gpt2-medium', '--device=cuda:1', '--vocab_size=65'])
    assert (config['batch_size'], config['n_layer']) == (7, 5)
    assert config['learning_rate'] == 1.0 and type(config['learning_rate']) is float  # an int is fine for a float
    assert config['compile'] is False and config['vocab_size'] == 65  # a default of None takes any value
    assert (config['init_from'], config['device']) == ('gpt2-medium', 'cuda:1')  # bare words are strings
    assert config['dropout'] == train.DEFAULTS['dropout']  # untouched keys keep their defaults


def test_unknown_key_suggests_the_closest_name(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'n_layers' \(did you mean 'n_layer'\?\)"):
        load_config(train.DEFAULTS, ['--n_layers=4'])
    path = write(tmp_path, "batch_size = 4\nlearning_rte = 1e-3\n")
    with pytest.raises(ConfigError, match=r"cfg.py:2: unknown config key 'learning_rte' \(did you mean 'learning_rate'"):
        load_config(train.DEFAULTS, [path])


@pytest.mark.parametrize('arg, message', [
    ('--batch_size=abc', r"'batch_size' must be int, got 'abc' \(str\)"),
    ('--batch_size=2.5', r"'batch_size' must be int, got 2.5 \(float\)"),
    ('--dropout=high', r"'dropout' must be float, got 'high' \(str\)"),
    ('--eval_only=yes', r"'eval_only' must be bool, got 'yes' \(str\)"),
    ('--batch_size', r"'--batch_size' needs a value: write --batch_size=VALUE"),
])
def test_wrong_types_name_key_value_and_expected_type(arg, message):
    with pytest.raises(ConfigError, match=message):
        load_config(train.DEFAULTS, [arg])


def test_wrong_type_in_a_file_names_the_line(tmp_path):
    path = write(tmp_path, "n_layer = 4\nn_head = '4'\n")
    with pytest.raises(ConfigError, match=r"cfg.py:2: 'n_head' must be int, got '4' \(str\)"):
        load_config(train.DEFAULTS, [path])


@pytest.mark.parametrize('source', [
    "import os\n",
    "batch_size = len('abcd')\n",
    "batch_size = __import__('os').system('touch {marker}')\n",
    "n_layer = 2 * 3\n",
    "def f():\n    pass\n",
    "batch_size, n_layer = 1, 2\n",
    "if True:\n    batch_size = 1\n",
    "open('{marker}', 'w')\n",
])
def test_a_config_file_with_code_is_refused_and_never_run(tmp_path, source):
    marker = tmp_path / 'ran'
    path = write(tmp_path, source.format(marker=marker))
    with pytest.raises(ConfigError, match=r"cfg.py:1: (a config file may only hold 'name = literal' assignments|"
                                          r"the value of '\w+' is not a literal \(a config file cannot run code\))"):
        load_config(train.DEFAULTS, [path])
    assert not marker.exists()


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.py' not found"):
        load_config(train.DEFAULTS, [str(tmp_path / 'nope.py')])
    path = write(tmp_path, "batch_size = = 3\n")
    with pytest.raises(ConfigError, match=r"cfg.py:1: not valid Python"):
        load_config(train.DEFAULTS, [path])


def test_defaults_hold_every_model_field_and_nothing_else():
    assert set(train.MODEL_KEYS) <= set(train.DEFAULTS)
    assert not {'DEFAULTS', 'MODEL_KEYS', 'RANK', 'MASTER', 'PEAK_BF16_FLOPS'} & set(train.DEFAULTS)
    assert all(isinstance(v, (int, float, bool, str, type(None))) for v in train.DEFAULTS.values())


def test_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as info:
        load_config(train.DEFAULTS, ['--help'])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(f"--{key}={value!r}" in out for key, value in train.DEFAULTS.items())


@pytest.mark.parametrize('content, message', [
    (bytes(range(256)) * 4, r"is not text \(not UTF-8\)"),
    (b"x = " + b"-" * 100_000 + b"1\n", "nested too deeply to read"),
], ids=['binary', 'nested-100000-deep'])
def test_unreadable_config_files_are_one_clear_error(tmp_path, content, message):
    (tmp_path / 'cfg.py').write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(train.DEFAULTS, [str(tmp_path / 'cfg.py')])


def test_deep_and_long_values_on_the_command_line(capsys):
    with pytest.raises(ConfigError, match="'vocab_size' is nested too deeply"):
        load_config(train.DEFAULTS, ['--vocab_size=' + '-' * 100_000 + '1'])
    with pytest.raises(ConfigError) as e:
        load_config(train.DEFAULTS, ['--batch_size=' + '[' * 5000 + ']' * 5000])
    assert len(str(e.value)) < 200  # the value is shown cut short, not 10,000 characters long


def test_a_missing_config_file_suggests_the_closest_one():
    with pytest.raises(ConfigError, match=r"config file 'config/train_shakespear_char.py' not found \(did you mean "
                                          r"'config/train_shakespeare_char.py'\?\)"):
        cwd = os.getcwd()
        try:
            os.chdir(HERE)
            load_config(train.DEFAULTS, ['config/train_shakespear_char.py'])
        finally:
            os.chdir(cwd)


@pytest.mark.parametrize('script, line', [
    ('train.py', "--eval_iters=200"), ('sample.py', "--temperature=0.8"), ('load_gpt2.py', "--out=''"),
])
def test_help_shows_each_keys_comment(script, line):
    out = subprocess.run([sys.executable, os.path.join(HERE, script), '--help'], capture_output=True, text=True,
                         timeout=60).stdout
    row = next(l for l in out.splitlines() if l.strip().startswith(line))
    assert len(row.split(line, 1)[1].strip()) > 5, row  # the comment written beside the default


def test_generation_dtype_is_bfloat16_on_a_cpu_with_fast_bfloat16_kernels(monkeypatch):
    import configurator
    cpu = torch.device('cpu')
    monkeypatch.setattr(configurator, "cpu_has_fast_bf16", lambda: True)
    assert configurator.pick_dtype("auto", cpu, generation=True) == "bfloat16"
    assert configurator.pick_dtype("auto", cpu) == "float32"  # training on a CPU stays float32
    monkeypatch.setattr(configurator, "cpu_has_fast_bf16", lambda: False)
    assert configurator.pick_dtype("auto", cpu, generation=True) == "float32"
    monkeypatch.undo()
    import model
    monkeypatch.setattr(model, "HAS_FP16_KERNEL", True)  # fbgemm's float16 kernels, with or without bf16 instructions
    assert configurator.cpu_has_fast_bf16()
