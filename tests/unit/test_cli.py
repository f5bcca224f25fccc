"""The command line's refusals: clean one-line errors and exit 2, never a traceback or lost files."""

from __future__ import annotations

import gc
import sys

import pytest

from glimpse.cli import main
from glimpse.engine.tiny_model import build_random_tiny_model


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    """What went to stderr, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def test_make_tiny_model_never_replaces_a_folder_with_other_files(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "important.txt").write_text("keep me")
    assert main(["make-tiny-model", str(folder)]) == 2
    assert (folder / "important.txt").read_text() == "keep me"
    assert "not empty" in _err(capsys)


def test_make_tiny_model_never_replaces_the_current_folder_or_a_parent(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert main(["make-tiny-model", "."]) == 2
    assert main(["make-tiny-model", ".."]) == 2
    assert (work / "notes.txt").read_text() == "mine"
    assert "current folder or one above it" in _err(capsys)


def test_make_tiny_model_refuses_a_file(tmp_path, capsys):
    target = tmp_path / "model"
    target.write_text("not a folder")
    assert main(["make-tiny-model", str(target)]) == 2
    assert "is a file" in _err(capsys)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"samples": -5}', "samples must be positive"),
        ('{"learning_rate": 0.1}', "unknown setting(s) learning_rate"),
        ('{"lr": "fast"}', "lr must be a number"),
        ('{"text_hidden": 100, "text_heads": 3}', "text_hidden must divide by text_heads"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "cannot read the training config"),
    ],
)
def test_train_tiny_refuses_a_bad_config_in_one_line(tmp_path, capsys, config, message):
    path = tmp_path / "train.json"
    path.write_text(config)
    assert main(["train-tiny", str(tmp_path / "out"), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split())
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_train_tiny_refuses_an_unwritable_folder_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["train-tiny", str(blocker / "model"), "--samples", "8"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the trained model" in " ".join(err.split())
    assert len(err.strip().splitlines()) == 1, err
    assert main(["train-tiny", str(tmp_path), "--epochs", "0"]) == 2
    assert "epochs must be positive" in _err(capsys)


@pytest.mark.slow
def test_make_tiny_model_rebuilds_its_own_folder(tmp_path):
    folder = build_random_tiny_model(tmp_path / "tiny")
    assert main(["make-tiny-model", str(folder)]) == 0
    assert (folder / "config.json").is_file()


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["serve", "--model", "tiny", "--port", "70000"], {}, "GLIMPSE_SERVER__PORT"),
        (["serve", "--model", "tiny"], {"GLIMPSE_SERVER__PORT": "abc"}, "valid integer"),
        (["serve", "--model", "tiny", "--max-batch-size", "0"], {}, "GLIMPSE_ENGINE__MAX_BATCH_SIZE"),
    ],
    ids=["port-out-of-range", "port-from-env-not-a-number", "batch-size-zero"],
)
def test_invalid_settings_are_one_line_each_and_exit_2(argv, env, expected, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = _err(capsys)
    assert expected in err
    assert "Traceback" not in err


def test_error_text_with_brackets_is_printed_as_is(capsys):
    # rich would read "[/path]" in the message as a closing tag and crash.
    assert main(["serve", "--upstream", "notaurl"]) == 2
    err = _err(capsys)
    assert "http(s)://host[:port][/path]" in err


def test_a_list_setting_that_is_not_json_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("GLIMPSE_GUARD__API_KEYS", "mysecretplainkey")
    assert main(["serve", "--model", "tiny"]) == 2
    err = _err(capsys)
    assert "take JSON" in err
    assert "mysecretplainkey" not in err
    assert "Traceback" not in err


def test_the_served_heap_is_frozen_once_the_model_is_loaded():
    """Long-lived objects leave the GC's walks: a full collection stalled the event loop for 0.3 s."""
    from glimpse.cli import _freeze_heap

    before = gc.get_freeze_count()
    try:
        _freeze_heap()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("module", ["torch", "transformers"])
def test_serve_without_the_model_runtime_names_the_extra_in_one_line(module, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    assert main(["serve", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"{module} is not installed" in err
    assert "pip install 'glimpse-serve[model]'" in err
    assert "Traceback" not in err
