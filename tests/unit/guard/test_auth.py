import time

import jwt
import pytest
from pydantic import SecretStr

from glimpse.config import GuardSettings
from glimpse.errors import Forbidden, Unauthorized
from glimpse.guard.auth import Authenticator, Principal, is_loopback
from glimpse.guard.keystore import ApiKey, KeyStore, generate_key, hash_key

SECRET = "j" * 64


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def key():
    return generate_key()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def auth(key, clock):
    keys = KeyStore(
        [
            ApiKey(
                "main", hash_key(key), scopes=("infer",), rate_limit_per_minute=3, token_quota_per_day=900
            ),
            ApiKey("old", hash_key("old-key"), expires_at=None),
        ]
    )
    return Authenticator(GuardSettings(jwt_secret=SecretStr(SECRET)), clock=clock, keys=keys)


def test_no_credentials_configured_means_anonymous_by_ip():
    auth = Authenticator(GuardSettings())
    assert not auth.auth_enabled
    principal = auth.authenticate(None, None, "10.0.0.7")
    assert principal == Principal(client_id="ip:10.0.0.7", name="10.0.0.7", auth_method="anonymous")


def test_env_key_enables_auth():
    auth = Authenticator(GuardSettings(api_keys=(SecretStr("k" * 40),)))
    assert auth.auth_enabled
    assert auth.authenticate("Bearer " + "k" * 40, None, "1.2.3.4").client_id == "key:env-1"


@pytest.mark.parametrize("header", ["bearer {k}", "Bearer {k}", "  Bearer   {k}  "])
def test_api_key_as_bearer(auth, key, header):
    principal = auth.authenticate(header.format(k=key), None, "1.2.3.4")
    assert principal == Principal(
        client_id="key:main",
        name="main",
        scopes=("infer",),
        rate_limit_per_minute=3,
        auth_method="api_key",
        token_quota_per_day=900,
    )


def test_api_key_header_wins_over_authorization(auth, key):
    assert auth.authenticate("Bearer nonsense", key, "h").client_id == "key:main"


def test_missing_credentials(auth):
    with pytest.raises(Unauthorized, match="Authentication required"):
        auth.authenticate(None, None, "h")
    with pytest.raises(Unauthorized, match="Authentication required"):
        auth.authenticate("  ", "", "h")


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        ("Basic dXNlcjpwYXNz", "scheme"),
        ("Bearer", "no credential"),
        ("Bearer glk_wrongwrongwrong", "Invalid API key"),
    ],
)
def test_bad_credentials_never_echo_the_secret(auth, authorization, message):
    with pytest.raises(Unauthorized, match=message) as info:
        auth.authenticate(authorization, None, "h")
    assert "wrongwrong" not in info.value.message
    assert "dXNlcjpwYXNz" not in info.value.message
    assert info.value.status_code == 401


def test_expired_key_is_refused(key):
    clock = Clock(now=2_000_000_000.0)
    from datetime import UTC, datetime

    expires = datetime.fromtimestamp(2_000_000_100, UTC)
    keys = KeyStore([ApiKey("temp", hash_key(key), expires_at=expires)])
    auth = Authenticator(GuardSettings(), clock=clock, keys=keys)
    assert auth.authenticate(None, key, "h").name == "temp"
    clock.now = 2_000_000_100.0
    with pytest.raises(Unauthorized, match="expired") as info:
        auth.authenticate(None, key, "h")
    assert key not in info.value.message


def test_jwt_bearer(auth):
    token = jwt.encode(
        {
            "sub": "svc-42",
            "exp": int(time.time()) + 60,
            "scope": "chat",
            "rate_limit_per_minute": 9,
            "token_quota_per_day": 0,
        },
        SECRET,
        "HS256",
    )
    principal = auth.authenticate(f"Bearer {token}", None, "h")
    assert principal == Principal(
        client_id="jwt:svc-42",
        name="svc-42",
        scopes=("chat",),
        rate_limit_per_minute=9,
        auth_method="jwt",
        token_quota_per_day=0,
    )


def test_forged_jwt_is_refused(auth):
    token = jwt.encode({"sub": "admin", "exp": int(time.time()) + 60}, "f" * 64, "HS256")
    with pytest.raises(Unauthorized) as info:
        auth.authenticate(f"Bearer {token}", None, "h")
    assert token not in info.value.message


def test_jwt_only_service_refuses_api_keys():
    auth = Authenticator(GuardSettings(jwt_secret=SecretStr(SECRET)))
    with pytest.raises(Unauthorized, match="API keys are not accepted"):
        auth.authenticate(None, "glk_something", "h")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        ((), {"chat", "infer", "analyze"}),  # no scopes listed: every route (keys from before scopes)
        (("infer",), {"infer"}),
        (("chat", "analyze"), {"chat", "analyze"}),
        (("openid", "profile"), {"chat", "infer", "analyze"}),  # only other services' scopes
        (("openid", "chat"), {"chat"}),
    ],
)
def test_scopes_limit_a_principal_to_their_routes(scopes, allowed):
    principal = Principal(client_id="key:a", name="a", scopes=scopes)
    for scope in ("chat", "infer", "analyze"):
        if scope in allowed:
            principal.require_scope(scope)
        else:
            with pytest.raises(Forbidden, match=f"needs the '{scope}' scope") as info:
                principal.require_scope(scope)
            assert info.value.status_code == 403


def test_a_key_scoped_to_infer_may_not_chat(auth, key):
    principal = auth.authenticate(None, key, "h")
    principal.require_scope("infer")
    with pytest.raises(Forbidden):
        principal.require_scope("chat")


def test_jwt_scope_claim_is_enforced(auth):
    token = jwt.encode({"sub": "svc", "exp": int(time.time()) + 60, "scope": "analyze"}, SECRET, "HS256")
    principal = auth.authenticate(f"Bearer {token}", None, "h")
    principal.require_scope("analyze")
    with pytest.raises(Forbidden):
        principal.require_scope("infer")
