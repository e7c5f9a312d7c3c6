from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from apiauth.vault import (
    MIN_BLOB_BYTES,
    DecryptionError,
    KeyConfigError,
    KeyFile,
    KeyRing,
    MasterKey,
    UnknownKeyError,
    Vault,
    VaultError,
    load_keyring,
    record_aad,
)

pytestmark = pytest.mark.fast

TOKEN_AAD = record_aad("connections", "con_123", "token_enc")
SECRET = b"ya29.a0-very-secret-access-token"

# Bytes 3..10 of a blob are the key id; see the layout in the module docstring.
KEY_ID_SLICE = range(3, 11)


@pytest.fixture
def key() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def vault(key: MasterKey) -> Vault:
    return Vault(KeyRing([key]))


def flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


# --- sealing and opening ---------------------------------------------------------------


def test_sealed_secret_opens_to_the_same_bytes(vault: Vault) -> None:
    assert vault.open(vault.seal(SECRET, TOKEN_AAD), TOKEN_AAD) == SECRET


def test_text_and_json_round_trip(vault: Vault) -> None:
    value = {"access_token": "abc", "scopes": ["repo", "user"], "naïve": None}
    assert vault.open_json(vault.seal_json(value, TOKEN_AAD), TOKEN_AAD) == value
    assert vault.open_text(vault.seal_text("pkce-verifier-ü", TOKEN_AAD), TOKEN_AAD) == (
        "pkce-verifier-ü"
    )


def test_json_is_sealed_compactly(vault: Vault) -> None:
    blob = vault.seal_json({"a": [1, 2]}, TOKEN_AAD)
    assert vault.open(blob, TOKEN_AAD) == b'{"a":[1,2]}'


def test_empty_plaintext_round_trips(vault: Vault) -> None:
    assert vault.open(vault.seal(b"", TOKEN_AAD), TOKEN_AAD) == b""


def test_every_seal_uses_fresh_randomness(vault: Vault) -> None:
    first, second = vault.seal(SECRET, TOKEN_AAD), vault.seal(SECRET, TOKEN_AAD)
    assert first != second
    # Different wrapped DEKs, and different bodies because the DEK differs per record.
    assert first[11:71] != second[11:71]
    assert first[71:] != second[71:]


def test_plaintext_never_appears_inside_the_blob(vault: Vault) -> None:
    blob = vault.seal(SECRET, TOKEN_AAD)
    assert SECRET not in blob
    assert SECRET[:8] not in blob
    assert base64.b64encode(SECRET) not in blob


def test_blob_names_the_key_it_was_sealed_under(vault: Vault, key: MasterKey) -> None:
    blob = vault.seal(SECRET, TOKEN_AAD)
    assert Vault.key_id_of(blob) == key.id
    assert blob[3:11] == key.id.encode()


def test_key_id_of_rejects_something_that_is_not_a_blob() -> None:
    with pytest.raises(DecryptionError):
        Vault.key_id_of(b"gho_plaintext-token-stored-by-mistake" * 4)
    with pytest.raises(DecryptionError):
        Vault.key_id_of(b"")


# --- tampering -------------------------------------------------------------------------


def test_every_flipped_byte_of_a_small_blob_fails_to_open(vault: Vault) -> None:
    blob = vault.seal(b"x", TOKEN_AAD)
    assert len(blob) == MIN_BLOB_BYTES + 1
    for index in range(len(blob)):
        tampered = flip(blob, index)
        if index in KEY_ID_SLICE:
            # A damaged key id reads like a key that was dropped from the configuration.
            with pytest.raises((DecryptionError, UnknownKeyError)):
                vault.open(tampered, TOKEN_AAD)
        else:
            with pytest.raises(DecryptionError):
                vault.open(tampered, TOKEN_AAD)


def test_every_truncation_fails_to_open(vault: Vault) -> None:
    blob = vault.seal(SECRET, TOKEN_AAD)
    for length in range(len(blob)):
        with pytest.raises(DecryptionError):
            vault.open(blob[:length], TOKEN_AAD)


def test_appended_bytes_fail_to_open(vault: Vault) -> None:
    with pytest.raises(DecryptionError):
        vault.open(vault.seal(SECRET, TOKEN_AAD) + b"\x00", TOKEN_AAD)


def test_ciphertext_copied_to_another_row_does_not_open(vault: Vault) -> None:
    blob = vault.seal(SECRET, TOKEN_AAD)
    with pytest.raises(DecryptionError):
        vault.open(blob, record_aad("connections", "con_456", "token_enc"))


def test_ciphertext_copied_to_another_column_does_not_open(vault: Vault) -> None:
    blob = vault.seal(SECRET, TOKEN_AAD)
    with pytest.raises(DecryptionError):
        vault.open(blob, record_aad("connections", "con_123", "refresh_token_enc"))


def test_wrapped_dek_moved_onto_another_rows_body_does_not_open(vault: Vault) -> None:
    other_aad = record_aad("connections", "con_456", "token_enc")
    mine, theirs = vault.seal(SECRET, TOKEN_AAD), vault.seal(b"other", other_aad)
    spliced = mine[:71] + theirs[71:]
    for aad in (TOKEN_AAD, other_aad):
        with pytest.raises(DecryptionError):
            vault.open(spliced, aad)


def test_record_aad_names_table_row_and_column() -> None:
    assert TOKEN_AAD == b"apiauth:v1:connections:con_123:token_enc"


@pytest.mark.parametrize(
    ("table", "row_id", "column"),
    [("", "r", "c"), ("t", "", "c"), ("t", "r", ""), ("a:b", "r", "c"), ("t", "r", "c:d")],
)
def test_record_aad_refuses_ambiguous_parts(table: str, row_id: str, column: str) -> None:
    with pytest.raises(ValueError, match="must be non-empty"):
        record_aad(table, row_id, column)


def test_row_ids_may_contain_colons_because_table_and_column_cannot() -> None:
    assert record_aad("oauth_clients", "github:acme", "secret_enc") == (
        b"apiauth:v1:oauth_clients:github:acme:secret_enc"
    )


# --- wrong and missing keys ------------------------------------------------------------


def test_wrong_key_with_the_same_id_fails_as_decryption_error(key: MasterKey) -> None:
    blob = Vault(KeyRing([key])).seal(SECRET, TOKEN_AAD)
    # Impossible with real keys (the id is derived from the secret), so forge the id.
    impostor = MasterKey.generate()
    object.__setattr__(impostor, "id", key.id)
    with pytest.raises(DecryptionError):
        Vault(KeyRing([impostor])).open(blob, TOKEN_AAD)


def test_blob_under_a_missing_key_raises_unknown_key_naming_it(key: MasterKey) -> None:
    blob = Vault(KeyRing([key])).seal(SECRET, TOKEN_AAD)
    with pytest.raises(UnknownKeyError) as excinfo:
        Vault(KeyRing([MasterKey.generate()])).open(blob, TOKEN_AAD)
    assert excinfo.value.key_id == key.id
    message = str(excinfo.value)
    assert key.id in message
    assert "APIAUTH_MASTER_KEY" in message
    assert "key file" in message
    assert not isinstance(excinfo.value, DecryptionError)
    assert isinstance(excinfo.value, VaultError)


def test_error_messages_never_contain_key_or_plaintext(key: MasterKey) -> None:
    vault = Vault(KeyRing([key]))
    blob = vault.seal(SECRET, TOKEN_AAD)
    errors: list[VaultError] = []
    for bad_blob, aad, ring in [
        (flip(blob, 80), TOKEN_AAD, KeyRing([key])),
        (blob, b"other", KeyRing([key])),
        (blob, TOKEN_AAD, KeyRing([MasterKey.generate()])),
        (blob[:50], TOKEN_AAD, KeyRing([key])),
    ]:
        with pytest.raises(VaultError) as excinfo:
            Vault(ring).open(bad_blob, aad)
        errors.append(excinfo.value)
    with pytest.raises(VaultError) as excinfo:
        vault.open_json(vault.seal(b"not json: " + SECRET, TOKEN_AAD), TOKEN_AAD)
    errors.append(excinfo.value)
    with pytest.raises(VaultError) as excinfo:
        vault.open_text(vault.seal(b"\xff" + SECRET, TOKEN_AAD), TOKEN_AAD)
    errors.append(excinfo.value)
    for error in errors:
        text = str(error) + repr(error)
        assert SECRET.decode() not in text
        assert key.to_text() not in text
        assert key.secret.hex() not in text
        assert "0xff" not in text
        assert error.__cause__ is None
        assert error.__suppress_context__ or error.__context__ is None


def test_master_key_repr_does_not_show_the_secret(key: MasterKey) -> None:
    for text in (repr(key), str(key), repr(KeyRing([key])), repr(Vault(KeyRing([key])))):
        assert key.to_text() not in text
        assert key.secret.hex() not in text
        assert str(key.secret) not in text
    assert key.id in repr(key)


# --- master keys and key rings ---------------------------------------------------------


def test_master_key_id_is_eight_hex_chars_of_the_secrets_sha256(key: MasterKey) -> None:
    assert key.id == hashlib.sha256(key.secret).hexdigest()[:8]
    assert len(key.secret) == 32


def test_master_key_text_round_trips_with_or_without_padding(key: MasterKey) -> None:
    text = key.to_text()
    assert "=" not in text
    assert MasterKey.from_text(text) == key
    assert MasterKey.from_text(text + "=") == key
    assert MasterKey.from_text(f"  {text}\n") == key


@pytest.mark.parametrize(
    "bad_text",
    [
        "",
        "   ",
        "not/base64+url!secretvalue",
        base64.urlsafe_b64encode(b"sixteen-byte-key").decode(),
        base64.urlsafe_b64encode(b"s3cr3t" * 10).decode(),
        "A",
    ],
)
def test_malformed_key_raises_key_config_error_without_echoing_it(bad_text: str) -> None:
    with pytest.raises(KeyConfigError) as excinfo:
        MasterKey.from_text(bad_text)
    if bad_text.strip():
        assert bad_text.strip() not in str(excinfo.value)


def test_master_key_setting_with_two_keys_makes_the_first_active() -> None:
    new, old = MasterKey.generate(), MasterKey.generate()
    ring = KeyRing.from_text(f"{new.to_text()},{old.to_text()}")
    assert ring.active == new
    assert ring.keys == (new, old)
    assert ring.get(old.id) == old


def test_key_ring_text_accepts_newlines_and_skips_blank_entries() -> None:
    new, old = MasterKey.generate(), MasterKey.generate()
    ring = KeyRing.from_text(f"\n{new.to_text()}, ,\n\n{old.to_text()},\n")
    assert ring.keys == (new, old)


def test_key_ring_drops_duplicates_keeping_order() -> None:
    new, old = MasterKey.generate(), MasterKey.generate()
    assert KeyRing([new, old, new, old]).keys == (new, old)


def test_empty_key_ring_is_a_config_error() -> None:
    with pytest.raises(KeyConfigError):
        KeyRing([])
    with pytest.raises(KeyConfigError, match="APIAUTH_MASTER_KEY"):
        KeyRing.from_text(" , \n")


def test_bad_entry_in_setting_names_the_source_and_position_not_the_key() -> None:
    good = MasterKey.generate().to_text()
    bad = base64.urlsafe_b64encode(b"too short but secret").decode()
    with pytest.raises(KeyConfigError) as excinfo:
        KeyRing.from_text(f"{good},{bad}")
    message = str(excinfo.value)
    assert "APIAUTH_MASTER_KEY" in message
    assert "key #2" in message
    assert "32 bytes" in message
    assert bad not in message
    assert good not in message


def test_load_keyring_prefers_the_setting_over_the_key_file(tmp_path: Path) -> None:
    key = MasterKey.generate()
    key_file = tmp_path / "data" / "master.key"
    ring = load_keyring(key.to_text(), key_file)
    assert ring.keys == (key,)
    assert not key_file.exists()


def test_load_keyring_without_setting_creates_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "data" / "master.key"
    first = load_keyring(None, key_file)
    assert key_file.exists()
    assert load_keyring(None, key_file).keys == first.keys


def test_set_but_empty_setting_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="APIAUTH_MASTER_KEY"):
        load_keyring("", tmp_path / "master.key")
    assert not (tmp_path / "master.key").exists()


# --- key file --------------------------------------------------------------------------


def test_key_file_is_created_with_mode_0600_and_parent_dirs(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        key_file = KeyFile(tmp_path / "a" / "b" / "master.key")
        assert not key_file.exists()
        ring = key_file.load_or_create()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(key_file.path.stat().st_mode) == 0o600
    assert len(ring.keys) == 1
    assert key_file.load().keys == ring.keys
    assert key_file.path.read_text() == ring.active.to_text() + "\n"
    assert [p.name for p in key_file.path.parent.iterdir()] == ["master.key"]


def test_load_or_create_reuses_an_existing_key_file(tmp_path: Path) -> None:
    key_file = KeyFile(tmp_path / "master.key")
    assert key_file.load_or_create().keys == key_file.load_or_create().keys


def test_add_new_key_puts_it_first_and_keeps_old_keys_readable(tmp_path: Path) -> None:
    key_file = KeyFile(tmp_path / "master.key")
    old_ring = key_file.load_or_create()
    blob = Vault(old_ring).seal(SECRET, TOKEN_AAD)

    new_key = key_file.add_new_key()

    ring = key_file.load()
    assert ring.active == new_key
    assert ring.keys == (new_key, *old_ring.keys)
    assert Vault(ring).open(blob, TOKEN_AAD) == SECRET
    assert stat.S_IMODE(key_file.path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


def test_keep_only_drops_the_other_keys(tmp_path: Path) -> None:
    key_file = KeyFile(tmp_path / "master.key")
    old_ring = key_file.load_or_create()
    old_blob = Vault(old_ring).seal(SECRET, TOKEN_AAD)
    new_key = key_file.add_new_key()

    key_file.keep_only(new_key.id)

    ring = key_file.load()
    assert ring.keys == (new_key,)
    assert stat.S_IMODE(key_file.path.stat().st_mode) == 0o600
    with pytest.raises(UnknownKeyError):
        Vault(ring).open(old_blob, TOKEN_AAD)


def test_keep_only_an_unknown_key_changes_nothing(tmp_path: Path) -> None:
    key_file = KeyFile(tmp_path / "master.key")
    ring = key_file.load_or_create()
    with pytest.raises(UnknownKeyError):
        key_file.keep_only("deadbeef")
    assert key_file.load().keys == ring.keys


def test_malformed_key_file_names_the_file_and_line_not_the_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    bad = "c2VjcmV0LWJ1dC10b28tc2hvcnQ"
    path.write_text(f"{MasterKey.generate().to_text()}\n{bad}\n")
    with pytest.raises(KeyConfigError) as excinfo:
        KeyFile(path).load()
    message = str(excinfo.value)
    assert str(path) in message
    assert "line 2" in message
    assert bad not in message


def test_empty_or_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    with pytest.raises(KeyConfigError, match="does not exist"):
        KeyFile(path).load()
    path.write_text("\n")
    with pytest.raises(KeyConfigError, match="no master key"):
        KeyFile(path).load()


# --- rotation --------------------------------------------------------------------------


def test_rewrap_moves_the_dek_under_the_new_key_and_keeps_the_body() -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    blob = Vault(KeyRing([old])).seal(SECRET, TOKEN_AAD)
    rotating = Vault(KeyRing([new, old]))

    rewrapped = rotating.rewrap(blob, TOKEN_AAD)

    assert Vault.key_id_of(rewrapped) == new.id
    assert rotating.open(rewrapped, TOKEN_AAD) == SECRET
    assert Vault(KeyRing([new])).open(rewrapped, TOKEN_AAD) == SECRET
    assert rewrapped[71:] == blob[71:]
    with pytest.raises(UnknownKeyError):
        Vault(KeyRing([old])).open(rewrapped, TOKEN_AAD)


def test_rewrap_of_a_blob_already_under_the_active_key_returns_it_unchanged() -> None:
    vault = Vault(KeyRing([MasterKey.generate()]))
    blob = vault.seal(SECRET, TOKEN_AAD)
    assert vault.rewrap(blob, TOKEN_AAD) is blob


def test_rewrap_refuses_a_broken_or_misplaced_record() -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    blob = Vault(KeyRing([old])).seal(SECRET, TOKEN_AAD)
    rotating = Vault(KeyRing([new, old]))
    with pytest.raises(DecryptionError):
        rotating.rewrap(blob, record_aad("connections", "con_456", "token_enc"))
    with pytest.raises(DecryptionError):
        rotating.rewrap(flip(blob, len(blob) - 1), TOKEN_AAD)
    with pytest.raises(DecryptionError):
        Vault(KeyRing([old])).rewrap(flip(blob, len(blob) - 1), TOKEN_AAD)


def test_interrupted_rotation_run_again_leaves_every_record_decryptable(
    tmp_path: Path,
) -> None:
    key_file = KeyFile(tmp_path / "master.key")
    old_vault = Vault(key_file.load_or_create())
    rows = {f"con_{n}": json.dumps({"token": f"secret-{n}"}).encode() for n in range(10)}
    table = {
        row_id: old_vault.seal(value, record_aad("connections", row_id, "token_enc"))
        for row_id, value in rows.items()
    }

    new_key = key_file.add_new_key()
    rotating = Vault(key_file.load())
    for row_id in list(table)[:5]:  # the rotation dies half-way
        table[row_id] = rotating.rewrap(
            table[row_id], record_aad("connections", row_id, "token_enc")
        )

    half = {Vault.key_id_of(blob) for blob in table.values()}
    assert half == {new_key.id, old_vault.active_key_id}
    for row_id, blob in table.items():
        assert rotating.open(blob, record_aad("connections", row_id, "token_enc")) == rows[row_id]

    rerun = Vault(key_file.load())
    for row_id in table:
        table[row_id] = rerun.rewrap(table[row_id], record_aad("connections", row_id, "token_enc"))
    key_file.keep_only(new_key.id)

    final = Vault(key_file.load())
    for row_id, blob in table.items():
        assert Vault.key_id_of(blob) == new_key.id
        assert final.open(blob, record_aad("connections", row_id, "token_enc")) == rows[row_id]
