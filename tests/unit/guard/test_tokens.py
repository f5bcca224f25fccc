import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from glimpse.config import GuardSettings
from glimpse.errors import Unauthorized
from glimpse.guard.tokens import JwtVerifier, looks_like_jwt

SECRET = "s" * 64


def _claims(**extra):
    now = int(time.time())
    return {"sub": "alice", "exp": now + 300, "iat": now, **extra}


def _hs_verifier(**settings):
    return JwtVerifier(GuardSettings(jwt_secret=SecretStr(SECRET), **settings))


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(private_key):
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def rsa_settings(tmp_path, rsa_key):
    path = tmp_path / "pub.pem"
    path.write_bytes(_public_pem(rsa_key))
    return GuardSettings(jwt_public_key_file=path, jwt_algorithms=("RS256", "HS256"))


def test_hs256_token_maps_claims():
    token = jwt.encode(_claims(scope="infer chat", rate_limit_per_minute=7, name="Alice"), SECRET, "HS256")
    claims = _hs_verifier().verify(token)
    assert claims.subject == "alice"
    assert claims.name == "Alice"
    assert claims.scopes == ("infer", "chat")
    assert claims.rate_limit_per_minute == 7
    assert claims.token_quota_per_day is None
    quota = _hs_verifier().verify(jwt.encode(_claims(token_quota_per_day=5000), SECRET, "HS256"))
    assert quota.token_quota_per_day == 5000


def test_wrong_secret_is_refused_without_echoing_the_token():
    token = jwt.encode(_claims(), "x" * 64, "HS256")
    with pytest.raises(Unauthorized) as info:
        _hs_verifier().verify(token)
    assert token not in info.value.message
    assert SECRET not in info.value.message


def test_alg_none_is_refused():
    token = jwt.encode(_claims(), None, algorithm="none")
    with pytest.raises(Unauthorized, match="invalid|algorithm"):
        _hs_verifier().verify(token)


def test_none_cannot_be_configured():
    with pytest.raises(ValueError, match="none"):
        JwtVerifier(GuardSettings(jwt_secret=SecretStr(SECRET), jwt_algorithms=("HS256", "None")))
    with pytest.raises(ValueError, match="unknown"):
        JwtVerifier(GuardSettings(jwt_secret=SecretStr(SECRET), jwt_algorithms=("HS257",)))


def test_algorithm_not_listed_is_refused():
    token = jwt.encode(_claims(), SECRET, "HS512")
    with pytest.raises(Unauthorized, match="algorithm"):
        _hs_verifier().verify(token)


def test_expiry_is_required_and_enforced_with_leeway():
    now = int(time.time())
    with pytest.raises(Unauthorized, match="required claim"):
        _hs_verifier().verify(jwt.encode({"sub": "a"}, SECRET, "HS256"))
    with pytest.raises(Unauthorized, match="expired"):
        _hs_verifier().verify(jwt.encode({"sub": "a", "exp": now - 120}, SECRET, "HS256"))
    # 10 s past expiry is inside the 30 s leeway.
    assert _hs_verifier().verify(jwt.encode({"sub": "a", "exp": now - 10}, SECRET, "HS256")).subject == "a"


def test_not_before_is_enforced_with_leeway():
    now = int(time.time())
    with pytest.raises(Unauthorized, match="not valid yet"):
        _hs_verifier().verify(jwt.encode(_claims(nbf=now + 120), SECRET, "HS256"))
    assert _hs_verifier().verify(jwt.encode(_claims(nbf=now + 10), SECRET, "HS256")).subject == "alice"


def test_audience_and_issuer_when_configured():
    verifier = _hs_verifier(jwt_audience="glimpse", jwt_issuer="https://idp.example")
    good = jwt.encode(_claims(aud="glimpse", iss="https://idp.example"), SECRET, "HS256")
    assert verifier.verify(good).subject == "alice"
    with pytest.raises(Unauthorized, match="audience"):
        verifier.verify(jwt.encode(_claims(aud="other", iss="https://idp.example"), SECRET, "HS256"))
    with pytest.raises(Unauthorized, match="issuer"):
        verifier.verify(jwt.encode(_claims(aud="glimpse", iss="https://evil.example"), SECRET, "HS256"))
    with pytest.raises(Unauthorized, match="required claim"):
        verifier.verify(jwt.encode(_claims(iss="https://idp.example"), SECRET, "HS256"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sub": ""}, "sub"),
        ({"scope": 5}, "scope"),
        ({"rate_limit_per_minute": "9"}, "rate_limit_per_minute"),
        ({"token_quota_per_day": -1}, "token_quota_per_day"),
        ({"token_quota_per_day": True}, "token_quota_per_day"),
    ],
)
def test_malformed_claims_are_refused(extra, message):
    with pytest.raises(Unauthorized, match=message):
        _hs_verifier().verify(jwt.encode(_claims(**extra), SECRET, "HS256"))


def test_rs256_with_public_key(rsa_settings, rsa_key):
    verifier = JwtVerifier(rsa_settings)
    assert verifier.algorithms == ("RS256",)  # HS256 dropped: a public key is configured
    token = jwt.encode(_claims(scopes=["infer"]), rsa_key, "RS256")
    assert verifier.verify(token).scopes == ("infer",)


def test_algorithm_confusion_public_key_as_hmac_secret_is_refused(rsa_settings, rsa_key):
    # Classic attack: sign HS256 with the (public) PEM as the HMAC secret. PyJWT's
    # own guard refuses PEM secrets, so forge the signature by hand.
    import base64
    import hashlib
    import hmac
    import json

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(_claims()).encode())
    signature = hmac.new(_public_pem(rsa_key), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}.{b64(signature)}"
    with pytest.raises(Unauthorized, match="algorithm"):
        JwtVerifier(rsa_settings).verify(forged)


def test_es256_key_type_picks_its_algorithms(tmp_path):
    private = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(_public_pem(private))
    verifier = JwtVerifier(GuardSettings(jwt_public_key_file=path, jwt_algorithms=("RS256", "ES256")))
    assert verifier.algorithms == ("ES256",)
    assert verifier.verify(jwt.encode(_claims(), private, "ES256")).subject == "alice"
    with pytest.raises(ValueError, match="lists none"):
        JwtVerifier(GuardSettings(jwt_public_key_file=path, jwt_algorithms=("RS256",)))


def test_unreadable_public_key_is_a_startup_error(tmp_path):
    path = tmp_path / "pub.pem"
    path.write_text("not a key")
    with pytest.raises(ValueError, match="cannot load"):
        JwtVerifier(GuardSettings(jwt_public_key_file=path, jwt_algorithms=("RS256",)))


def test_disabled_without_key_or_secret():
    verifier = JwtVerifier(GuardSettings())
    assert not verifier.enabled
    with pytest.raises(Unauthorized):
        verifier.verify("a.b.c")


def test_jwt_shape():
    assert looks_like_jwt("eyJh.eyJz.sig-_")
    assert not looks_like_jwt("glk_abcdef")
    assert not looks_like_jwt("a.b")
