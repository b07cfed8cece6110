"""Interop with the Go llm-proxy's encrypted upstream keys, checked with Go itself.

A small Go program, built here from Go's standard ``crypto/aes``, ``crypto/cipher`` and
``encoding/base64`` only, encrypts and decrypts as the Go llm-proxy does: the key is
``base64.StdEncoding`` of 32 bytes, ``gcm.Seal(nonce, nonce, plaintext, nil)`` with a
12-byte random nonce, and ``enc:v1:`` + ``base64.StdEncoding`` of the result. Our
``enc:v1`` values must open in Go and Go's here, through the ``DB`` too.

Skipped when ``go`` is not on PATH, except under ``CI=true``, where it fails (CI installs
Debian's ``golang-go``).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import attrs
import pytest

from llm_proxy_db import FullConfig, Project, new_from_full_config
from llm_proxy_db._encrypting import unwrapped
from llm_proxy_db._encryption import Cipher, decode_key

GO_PROGRAM = r"""
package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

const prefix = "enc:v1:"

func newGCM(encoded string) (cipher.AEAD, error) {
	key, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, err
	}
	if len(key) != 32 {
		return nil, errors.New("key must be 32 bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func encrypt(gcm cipher.AEAD, plaintext string) (string, error) {
	if plaintext == "" {
		return "", nil
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return "", err
	}
	sealed := gcm.Seal(nonce, nonce, []byte(plaintext), nil)
	return prefix + base64.StdEncoding.EncodeToString(sealed), nil
}

func decrypt(gcm cipher.AEAD, value string) (string, error) {
	if !strings.HasPrefix(value, prefix) {
		return value, nil
	}
	data, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(value, prefix))
	if err != nil {
		return "", err
	}
	size := gcm.NonceSize()
	if len(data) < size {
		return "", errors.New("ciphertext too short")
	}
	plaintext, err := gcm.Open(nil, data[:size], data[size:], nil)
	if err != nil {
		return "", err
	}
	return string(plaintext), nil
}

// usage: tool KEY encrypt|decrypt VALUE...; one result per line, values base64-wrapped so
// that any text survives the trip.
func main() {
	gcm, err := newGCM(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad key:", err)
		os.Exit(2)
	}
	for _, arg := range os.Args[3:] {
		raw, _ := base64.StdEncoding.DecodeString(arg)
		var out string
		if os.Args[2] == "encrypt" {
			out, err = encrypt(gcm, string(raw))
		} else {
			out, err = decrypt(gcm, string(raw))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "failed:", err)
			os.Exit(1)
		}
		fmt.Println(base64.StdEncoding.EncodeToString([]byte(out)))
	}
}
"""

KEY = base64.b64encode(os.urandom(32)).decode()
PLAINTEXTS = ["sk-proj-0123456789abcdefABCDEF", "ключ 🔑 with spaces", "x" * 500]


@pytest.fixture(scope="module")
def go_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("go is not on PATH; CI must install it (apt-get install -y golang-go)")
        pytest.skip("go is not on PATH (install Debian's golang-go to run the interop check)")
    folder = tmp_path_factory.mktemp("go")
    (folder / "main.go").write_text(GO_PROGRAM)
    # A build cache of the test's own: the user's is left alone (a cold build takes ~1 s).
    cache = str(tmp_path_factory.getbasetemp() / "go-cache")
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "CGO_ENABLED": "0", "GOCACHE": cache}
    tool = folder / "tool"
    subprocess.run(
        [go, "build", "-o", str(tool), "main.go"],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return tool


def _go(tool: Path, mode: str, values: list[str], *, key: str = KEY) -> list[str]:
    wrapped = [base64.b64encode(v.encode()).decode() for v in values]
    done = subprocess.run(
        [str(tool), key, mode, *wrapped], capture_output=True, text=True, timeout=30, check=True
    )
    return [base64.b64decode(line).decode() for line in done.stdout.splitlines()]


def test_ours_decrypt_in_go(go_tool: Path) -> None:
    cipher = Cipher([decode_key(KEY, "ENCRYPTION_KEY")], version=1)
    ours = [cipher.encrypt(text, project_id="any") for text in PLAINTEXTS]
    assert all(value.startswith("enc:v1:") for value in ours)
    assert _go(go_tool, "decrypt", ours) == PLAINTEXTS


def test_gos_decrypt_here(go_tool: Path) -> None:
    theirs = _go(go_tool, "encrypt", PLAINTEXTS)
    assert all(value.startswith("enc:v1:") for value in theirs)
    cipher = Cipher([decode_key(KEY, "ENCRYPTION_KEY")], version=1)
    assert [cipher.decrypt(value, project_id="any") for value in theirs] == PLAINTEXTS
    # A rotating configuration that still lists the Go key reads them too.
    other = os.urandom(32)
    rotating = Cipher([other, decode_key(KEY, "k")], version=2)
    assert [rotating.decrypt(value, project_id="any") for value in theirs] == PLAINTEXTS


def test_a_database_shared_with_go(go_tool: Path, tmp_path: Path) -> None:
    pytest.importorskip("llm_proxy_db_sqlite")
    config = FullConfig(path=str(tmp_path / "shared.db"), encryption_key=KEY)
    with new_from_full_config(config) as db:
        ours = db.create_project(Project(name="ours", openai_api_key=PLAINTEXTS[0]))
        theirs = db.create_project(Project(name="theirs", openai_api_key="placeholder"))
        # The Go program writes its own row (here: its ciphertext stored as it would store it).
        (sealed,) = _go(go_tool, "encrypt", [PLAINTEXTS[1]])
        unwrapped(db).update_project(attrs.evolve(theirs, openai_api_key=sealed))
        stored = unwrapped(db).get_project_by_id(ours.id).openai_api_key
        assert _go(go_tool, "decrypt", [stored]) == [PLAINTEXTS[0]]
        assert db.get_project_by_id(theirs.id).openai_api_key == PLAINTEXTS[1]


def test_go_refuses_another_key(go_tool: Path) -> None:
    cipher = Cipher([decode_key(KEY, "k")], version=1)
    value = cipher.encrypt("sk-secret", project_id="p")
    other = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(subprocess.CalledProcessError):
        _go(go_tool, "decrypt", [value], key=other)
