import json
import re

import pytest

from glimpse.config import GuardSettings
from glimpse.guard.keys import main
from glimpse.guard.keystore import KeyStore


def test_new_prints_the_key_once_and_an_entry_that_the_store_accepts(tmp_path, capsys):
    assert (
        main(
            [
                "new",
                "--name",
                "ci-bot",
                "--scopes",
                "infer,chat",
                "--rate-limit",
                "30",
                "--token-quota",
                "5000",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    key = re.search(r"key \(shown once, store it now\): (\S+)", out).group(1)
    entry = json.loads(out.split("entry for the keys file:\n", 1)[1])
    assert key not in json.dumps(entry)
    assert entry["scopes"] == ["infer", "chat"]
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([entry]), encoding="utf-8")
    found = KeyStore.from_settings(GuardSettings(api_keys_file=path)).lookup(key)
    assert found is not None
    assert found.name == "ci-bot"
    assert found.rate_limit_per_minute == 30
    assert found.token_quota_per_day == 5000


def test_new_refuses_an_unknown_scope(capsys):
    with pytest.raises(SystemExit) as info:
        main(["new", "--name", "typo", "--scopes", "infer,chta"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown scope(s) chta" in err
    assert "key (shown once" not in err
