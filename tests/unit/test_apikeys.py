from quotagate import apikeys


def test_new_key_has_prefix_id_secret_and_valid_checksum():
    key = apikeys.new_key()
    assert key.plaintext.startswith("qg_")
    assert apikeys.parse_key(key.plaintext) == key
    assert len(key.plaintext) == 3 + 12 + 1 + 40 + 6


def test_any_single_character_change_is_rejected_without_io():
    plaintext = apikeys.new_key().plaintext
    for position in range(3, len(plaintext)):
        if plaintext[position] == "_":
            continue
        replacement = "b" if plaintext[position] != "b" else "c"
        mutated = plaintext[:position] + replacement + plaintext[position + 1 :]
        assert apikeys.parse_key(mutated) is None, position


def test_garbage_is_rejected():
    for candidate in ["", "qg_", "sk-abc", "qg_" + "a" * 200, "Bearer x", "qg_AAAAAAAAAAAA_" + "a" * 46]:
        assert apikeys.parse_key(candidate) is None


def test_rotation_keeps_the_key_id_and_only_hashes_are_compared():
    old = apikeys.new_key()
    new = apikeys.new_key(old.key_id)
    assert new.key_id == old.key_id and new.plaintext != old.plaintext
    stored = apikeys.hash_key(old.plaintext)
    assert len(stored) == 64 and old.plaintext not in stored
    assert apikeys.hashes_match(stored, old.plaintext)
    assert not apikeys.hashes_match(stored, new.plaintext)


def test_secret_fingerprint_names_a_secret_without_revealing_it():
    key = apikeys.new_key()
    stored = apikeys.hash_key(key.plaintext)
    fingerprint = apikeys.secret_fingerprint(stored)
    assert fingerprint == apikeys.secret_fingerprint(stored)
    assert len(fingerprint) == apikeys.FINGERPRINT_LENGTH
    assert fingerprint not in stored and fingerprint not in key.plaintext
    # Not a prefix of a plain hash of the key or of the stored hash (domain-separated).
    assert fingerprint != apikeys.hash_key(stored)[: apikeys.FINGERPRINT_LENGTH]
    rotated = apikeys.new_key(key.key_id)
    assert apikeys.secret_fingerprint(apikeys.hash_key(rotated.plaintext)) != fingerprint
