"""Upstream keys at rest: the formats, the keys, the config, and the layer every backend gets."""

from __future__ import annotations

import base64
import os
import pickle
import traceback
from pathlib import Path

import attrs
import pytest

from llm_proxy_db import (
    ConfigError,
    DatabaseError,
    FullConfig,
    Project,
    Token,
    config_from_env,
    converter,
    mask_token,
    new_from_full_config,
    public_dict,
)
from llm_proxy_db._encrypting import EncryptingBackend, unwrapped
from llm_proxy_db._encryption import Cipher, decode_key, key_id, value_state

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(32, 64))).decode()
SECRET = "sk-upstream-SECRET-0123456789abcdef"


def _v1(key: str = KEY_A) -> Cipher:
    return Cipher([decode_key(key, "k")], version=1)


def _v2(*keys: str) -> Cipher:
    return Cipher([decode_key(k, "k") for k in keys], version=2)


def _all_text(exc: BaseException) -> str:
    """Everything an exception could show: message, repr, attributes, traceback, chain."""
    parts = ["".join(traceback.format_exception(exc)), repr(exc), repr(vars(exc))]
    return "\n".join(parts)


# -- the formats --


def test_v1_round_trip_is_the_go_layout() -> None:
    cipher = _v1()
    stored = cipher.encrypt(SECRET, project_id="p1")
    assert stored.startswith("enc:v1:") and SECRET not in stored
    raw = base64.b64decode(stored[len("enc:v1:") :], validate=True)
    assert len(raw) == 12 + len(SECRET.encode()) + 16  # nonce || ciphertext || tag
    assert cipher.decrypt(stored, project_id="p1") == SECRET
    # No associated data in v1 (as Go's Seal(nonce, nonce, plaintext, nil)): another row reads it.
    assert cipher.decrypt(stored, project_id="another") == SECRET
    assert value_state(stored) == "enc:v1" and cipher.current == "enc:v1"


def test_v1_matches_a_reference_seal() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    sealed = AESGCM(decode_key(KEY_A, "k")).encrypt(nonce, SECRET.encode(), None)
    stored = "enc:v1:" + base64.b64encode(nonce + sealed).decode()
    assert _v1().decrypt(stored, project_id="x") == SECRET


def test_each_encryption_draws_a_new_nonce() -> None:
    cipher = _v2(KEY_A)
    assert len({cipher.encrypt(SECRET, project_id="p") for _ in range(50)}) == 50


def test_v2_round_trip_names_its_key() -> None:
    cipher = _v2(KEY_A, KEY_B)
    stored = cipher.encrypt(SECRET, project_id="p1")
    ident = key_id(decode_key(KEY_A, "k"))
    assert stored.startswith(f"enc:v2:{ident}:") and len(ident) == 8
    assert value_state(stored) == f"enc:v2:{ident}" == cipher.current
    assert cipher.decrypt(stored, project_id="p1") == SECRET
    assert cipher.key_ids == (ident, key_id(decode_key(KEY_B, "k")))


def test_v2_ciphertext_moved_to_another_project_is_refused() -> None:
    cipher = _v2(KEY_A)
    stored = cipher.encrypt(SECRET, project_id="p1")
    with pytest.raises(DatabaseError, match="does not belong to this project") as info:
        cipher.decrypt(stored, project_id="p2")
    assert SECRET not in _all_text(info.value) and stored not in _all_text(info.value)


def test_rotation_reads_old_keys_and_writes_the_first() -> None:
    old = _v2(KEY_B)
    stored_old = old.encrypt(SECRET, project_id="p")
    stored_v1 = _v1(KEY_B).encrypt(SECRET, project_id="p")
    rotated = _v2(KEY_A, KEY_B)
    assert rotated.decrypt(stored_old, project_id="p") == SECRET
    assert rotated.decrypt(stored_v1, project_id="p") == SECRET  # v1 tries every key
    assert not rotated.is_current(stored_old) and not rotated.is_current(stored_v1)
    assert rotated.is_current(rotated.encrypt(SECRET, project_id="p"))


@pytest.mark.parametrize("version", [1, 2])
def test_wrong_key_is_a_clear_error_without_the_secret(version: int) -> None:
    writer = _v1(KEY_A) if version == 1 else _v2(KEY_A)
    reader = _v1(KEY_B) if version == 1 else _v2(KEY_B)
    stored = writer.encrypt(SECRET, project_id="p1")
    with pytest.raises(DatabaseError, match="cannot decrypt the upstream key of project 'p1'") as e:
        reader.decrypt(stored, project_id="p1")
    text = _all_text(e.value)
    assert SECRET not in text and KEY_A not in text and KEY_B not in text
    assert e.value.__context__ is None and e.value.__cause__ is None


def test_tampered_and_malformed_values_are_refused() -> None:
    cipher = _v2(KEY_A)
    stored = cipher.encrypt(SECRET, project_id="p")
    flipped = stored[:-3] + ("A" if stored[-3] != "A" else "B") + stored[-2:]
    for bad in (flipped, stored[:20], "enc:v1:not base64!", "enc:v1:", "enc:v9:abc"):
        with pytest.raises(DatabaseError, match="cannot decrypt"):
            cipher.decrypt(bad, project_id="p")


def test_plaintext_and_empty_values_pass_through() -> None:
    cipher = _v2(KEY_A)
    assert cipher.decrypt(SECRET, project_id="p") == SECRET
    assert value_state(SECRET) == "plaintext"
    assert cipher.encrypt("", project_id="p") == "" and cipher.decrypt("", project_id="p") == ""
    assert value_state("") == "empty" and cipher.is_current("")
    assert _v1().encrypt("", project_id="p") == ""


def test_unicode_round_trips() -> None:
    for text in ("ключ-🔑", "a\x00b", "\ud800"):
        for cipher in (_v1(), _v2(KEY_A)):
            assert cipher.decrypt(cipher.encrypt(text, project_id="p"), project_id="p") == text


def test_cipher_repr_and_pickle_hide_keys() -> None:
    cipher = _v2(KEY_A, KEY_B)
    assert KEY_A not in repr(cipher) and "enc:v2:" in repr(cipher)
    with pytest.raises(TypeError):
        pickle.dumps(cipher)


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        _v2(KEY_A, KEY_A)


# -- configuration --


def test_config_from_env_reads_the_keys() -> None:
    one = config_from_env({"ENCRYPTION_KEY": f" {KEY_A}\n"})
    assert one.encryption_key == KEY_A and one.encryption_keys == ()
    two = config_from_env({"ENCRYPTION_KEYS": f"{KEY_A}, {KEY_B}"})
    assert two.encryption_keys == (KEY_A, KEY_B) and two.encryption_key is None
    assert config_from_env({}).encryption_key is None
    assert config_from_env({"REQUIRE_ENCRYPTION_KEY": "true", "ENCRYPTION_KEY": KEY_A})
    assert not config_from_env({"REQUIRE_ENCRYPTION_KEY": "false"}).require_encryption_key


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"ENCRYPTION_KEY": "not-base64!!"}, "ENCRYPTION_KEY is not valid base64"),
        ({"ENCRYPTION_KEY": base64.b64encode(b"x" * 16).decode()}, "ENCRYPTION_KEY decodes to 16"),
        ({"ENCRYPTION_KEY": KEY_A[:-1]}, "ENCRYPTION_KEY is not valid base64"),  # no padding
        ({"ENCRYPTION_KEYS": f"{KEY_A},,{KEY_B}"}, r"ENCRYPTION_KEYS: key 2 is empty"),
        ({"ENCRYPTION_KEYS": f"{KEY_A},short"}, r"ENCRYPTION_KEYS \(key 2\)"),
        ({"ENCRYPTION_KEY": KEY_A, "ENCRYPTION_KEYS": KEY_B}, "not both"),
        ({"REQUIRE_ENCRYPTION_KEY": "true"}, "REQUIRE_ENCRYPTION_KEY is true"),
        ({"REQUIRE_ENCRYPTION_KEY": "maybe"}, "is not true or false"),
    ],
)
def test_bad_encryption_settings_name_the_variable_never_the_key(
    env: dict[str, str], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        config_from_env(env)
    text = _all_text(info.value)
    for value in env.values():
        if value not in ("true", "maybe"):
            for part in value.split(","):
                assert not part or part not in text
    assert info.value.__context__ is None


def test_full_config_validates_and_hides_keys() -> None:
    config = FullConfig(encryption_keys=[KEY_A, KEY_B])
    assert config.encryption_keys == (KEY_A, KEY_B)
    assert KEY_A not in repr(config) and KEY_A not in repr(FullConfig(encryption_key=KEY_A))
    with pytest.raises(ConfigError, match="encryption_key is not valid base64"):
        FullConfig(encryption_key="%%%")
    with pytest.raises(ConfigError, match="a list of base64 keys"):
        FullConfig(encryption_keys=KEY_A)
    with pytest.raises(ConfigError, match="not both"):
        FullConfig(encryption_key=KEY_A, encryption_keys=(KEY_B,))
    with pytest.raises(ConfigError, match="required"):
        FullConfig(require_encryption_key=True)
    assert FullConfig(require_encryption_key=True, encryption_keys=(KEY_A,))


def test_open_refuses_without_a_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REQUIRE_ENCRYPTION_KEY"):
        new_from_full_config(
            config_from_env({"REQUIRE_ENCRYPTION_KEY": "1", "DB_DRIVER": "memory"})
        )


# -- the layer --


def test_no_key_installs_no_layer() -> None:
    with new_from_full_config(FullConfig(driver="memory")) as db:
        assert not isinstance(db._backend, EncryptingBackend)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("driver", ["memory", "sqlite"])
def test_layer_stores_ciphertext_and_returns_plaintext(
    driver: str, version: str, tmp_path: Path
) -> None:
    if driver == "sqlite":
        pytest.importorskip("llm_proxy_db_sqlite")
    keys = {"encryption_key": KEY_A} if version == "v1" else {"encryption_keys": (KEY_A,)}
    config = FullConfig(driver=driver, path=str(tmp_path / "db.sqlite"), **keys)
    with new_from_full_config(config) as db:
        assert isinstance(db._backend, EncryptingBackend)
        project = Project(name="p", openai_api_key=SECRET)
        assert db.create_project(project) == project
        raw = unwrapped(db).get_project_by_id(project.id).openai_api_key
        assert raw.startswith(f"enc:{version}:") and SECRET not in raw
        assert db.get_project_by_id(project.id).openai_api_key == SECRET
        assert [p.openai_api_key for p in db.list_projects()] == [SECRET]
        updated = db.update_project(attrs.evolve(project, openai_api_key="sk-new-key-000"))
        assert updated.openai_api_key == "sk-new-key-000"
        with db.transaction() as tx:
            assert tx.get_project_by_id(project.id).openai_api_key == "sk-new-key-000"
            tx.update_project(attrs.evolve(project, openai_api_key=SECRET))
            assert tx.list_projects()[0].openai_api_key == SECRET
        stored = unwrapped(db).get_project_by_id(project.id).openai_api_key
        assert stored.startswith(f"enc:{version}:")
        token = db.create_token(Token(project_id=project.id))
        assert db.increment_token_usage(token.token).request_count == 1
        assert SECRET not in repr(db._backend)


def test_plaintext_rows_still_read_with_a_key(tmp_path: Path) -> None:
    pytest.importorskip("llm_proxy_db_sqlite")
    path = str(tmp_path / "db.sqlite")
    with new_from_full_config(FullConfig(path=path)) as db:
        project = db.create_project(Project(name="p", openai_api_key=SECRET))
    with new_from_full_config(FullConfig(path=path, encryption_key=KEY_A)) as db:
        assert db.get_project_by_id(project.id).openai_api_key == SECRET
    with new_from_full_config(FullConfig(path=path, encryption_key=KEY_B)) as db:
        db.update_project(project)
    with new_from_full_config(FullConfig(path=path, encryption_key=KEY_A)) as db:
        with pytest.raises(DatabaseError, match="no configured key opens it") as info:
            db.get_project_by_id(project.id)
        assert SECRET not in _all_text(info.value)


# -- serialisation --


def test_public_dict_redacts_and_converter_round_trips() -> None:
    project = Project(name="p", openai_api_key=SECRET)
    token = Token(project_id=project.id)
    shown = public_dict(project)
    assert "openai_api_key" not in shown and SECRET not in str(shown)
    assert shown["name"] == "p" and shown["created_at"].endswith("+00:00")
    assert public_dict(token)["token"] == mask_token(token.token)
    assert token.token not in str(public_dict(token))
    for record in (project, token):
        assert converter.structure(converter.unstructure(record), type(record)) == record
    with pytest.raises(TypeError):
        public_dict({"openai_api_key": SECRET})  # type: ignore[arg-type]
