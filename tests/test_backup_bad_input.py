"""The backup tool refuses bad input: clear errors, nothing lost, meaningful exit codes.

Exit codes (backup_timer/__main__.py): 0 done, 1 failed or refused by the repository or the
target, 2 usage or configuration (found before any data is touched), 3 locked, 4 not converged.
A snapshot id that names no snapshot exits 1 whether it is malformed or just unknown: the fix
is the same (pick one from `list`). Every test runs against real Azurite and real directories.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from backup_timer import restore
from backup_timer.__main__ import main
from backup_timer.commands import backup, open_repository
from backup_timer.repository import Entry, Manifest, Repository
from backup_timer.stores import DirStore
from backup_timer.verify import verify
from shared.settings import Settings

from .azurite import ACCOUNT, ACCOUNT_KEY, Azurite, change_blobs, fill_like_vault, new_container
from .conftest import REPO, free_port

CLEARED = ("AZURE_", "BACKUP_", "VAULTFN_", "VAULT_", "BAO_", "FUNCTIONS_", "APPLICATIONINSIGHTS_")
KEEP_ONE = {"BACKUP_KEEP_LAST": "1", "BACKUP_KEEP_HOURLY": "0", "BACKUP_KEEP_DAILY": "0"}
KEEP_ONE |= {"BACKUP_KEEP_WEEKLY": "0", "BACKUP_KEEP_MONTHLY": "0"}

# --------------------------------------------------------------------------------------------
# Fixtures: one small source and a directory repository with two snapshots, copied per test.
# --------------------------------------------------------------------------------------------


@dataclass
class Pristine:
    path: Path  # a directory repository: `old`, then `new` after 5 blobs changed
    old: str
    new: str
    source: ContainerClient
    source_env: dict[str, str]  # what `run` needs to read the source


@pytest.fixture(scope="module")
def pristine(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pristine]:
    if not azurite.running:
        azurite.start()
    source = new_container(azurite, "vault")
    contents = fill_like_vault(source, 20)
    path = tmp_path_factory.mktemp("pristine") / "repo"
    source_env = {
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "AZURE_BLOB_CONTAINER": source.container_name,
    }
    settings = Settings.from_env({**source_env, "BACKUP_DIR": str(path), "BACKUP_STORAGE_RETRIES": "0"}).backup
    old = backup(settings, open_repository(settings)).manifest
    change_blobs(source, sorted(contents)[:5], seed=1)
    new = backup(settings, open_repository(settings)).manifest
    assert new.copied == 5
    yield Pristine(path, old.id, new.id, source, source_env)
    source.delete_container()


@pytest.fixture
def repo(pristine: Pristine, tmp_path: Path) -> Path:
    """A copy of the pristine repository at tmp_path/repo (the test may damage it)."""
    path = tmp_path / "repo"
    shutil.copytree(pristine.path, path, symlinks=True)
    return path


Call = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Call:
    """`main([...])` in this process with a clean environment plus `env`: (exit code, stdout, stderr)."""

    def call(*args: str | Path, **env: str) -> tuple[int, str, str]:
        for key in [k for k in os.environ if k.startswith(CLEARED)]:
            monkeypatch.delenv(key)
        for key, value in {"VAULTFN_DATA_DIR": str(tmp_path / "data"), "BACKUP_STORAGE_RETRIES": "0", **env}.items():
            monkeypatch.setenv(key, value)
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code
        out, err = capsys.readouterr()
        return code, out, err

    return call


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED)}
    env.update(PYTHONPATH=str(REPO), VAULTFN_DATA_DIR=str(tmp_path / "data"), BACKUP_STORAGE_RETRIES="0")
    env.update(extra)
    return env


def command(args: list[str | Path], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m backup_timer ...` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "backup_timer", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def tree(root: Path) -> dict[str, bytes | str | None]:
    """Every file (its bytes), directory (None) and symlink (its target) under root."""
    found: dict[str, bytes | str | None] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        else:
            found[name] = None if path.is_dir() else path.read_bytes()
    return found


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("backup: "), stderr
    return lines[0]


def manifest_path(repo: Path, snapshot: str) -> Path:
    return repo / "snapshots" / f"{snapshot}.json"


def edit_manifest(repo: Path, snapshot: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = manifest_path(repo, snapshot)
    data = json.loads(path.read_bytes())
    change(data)
    path.write_text(json.dumps(data))


def unique_entries(repo: Path, pristine: Pristine) -> list[Entry]:
    """Entries of `new` whose objects no other snapshot references (the 5 changed blobs)."""
    repository = Repository(DirStore(repo))
    old = {e.object for e in repository.load(pristine.old).entries}
    return [e for e in repository.load(pristine.new).entries if e.object not in old]


def add_raft_snapshot(repo: Path, snapshot: str) -> bytes:
    """A raft snapshot laid out as docs/backup-format.md says (a small gzipped tar as the archive)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo("state.bin")
        member.size = 4
        archive.addfile(member, io.BytesIO(b"raft"))
    data = buffer.getvalue()
    key = f"objects/raft/{snapshot}.snap"
    (repo / key).parent.mkdir(parents=True, exist_ok=True)
    (repo / key).write_bytes(data)
    entry = Entry("raft.snap", len(data), hashlib.md5(data).hexdigest(), None, key)
    manifest = Manifest(snapshot, "2020-01-01T00:00:00Z", {"kind": "raft", "address": "http://127.0.0.1:8200"}, [entry])
    manifest_path(repo, snapshot).write_text(json.dumps(manifest.as_dict()))
    return data


# --------------------------------------------------------------------------------------------
# 1. Snapshot ids
# --------------------------------------------------------------------------------------------

BAD_IDS = [
    "../config",
    "../../decoy",
    "snapshots/../config",
    "20261204T030000Z/../../decoy",
    "/etc/passwd",
    "",
    ".hidden",
    ".",
    "..",
    "x" * 300,
    "2" * 5000,
    "20261204T030000Z\n",
    "\x1b[2J\x07",
    "20261204T030000Z.json",
    "20261204t030000z",
]


def plant_decoys(tmp_path: Path, repo: Path) -> None:
    """Valid manifests outside snapshots/, where a traversing id would find them."""
    decoy = Manifest("DECOY", "2020-01-01T00:00:00Z", {"kind": "blob"}, []).as_dict()
    for where in (tmp_path / "decoy.json", repo / "decoy.json", repo / "objects" / "decoy.json"):
        where.write_text(json.dumps(decoy))


@pytest.mark.parametrize("verb", ["show", "verify", "restore"])
def test_bad_snapshot_ids_are_refused_and_nothing_is_read_or_written(
    verb: str, repo: Path, tmp_path: Path, cli: Call
) -> None:
    """Ids with ../, /, abs path, '', dot, 5000 chars, NUL, ESC to show/verify/restore: exit 1, nothing read/written."""
    plant_decoys(tmp_path, repo)
    before = tree(tmp_path)
    for snapshot in [*BAD_IDS, str(tmp_path / "decoy"), "20261204T030000Z\x00", "\x00"]:
        target = ["--to-dir", tmp_path / "out"] if verb == "restore" else []
        code, out, err = cli(verb, snapshot, "--json", "--repo-dir", repo, *target)
        line = one_line(err)
        assert (code, out) == (1, ""), (snapshot, err)
        assert "is not a snapshot id" in line and "see `list`" in line, line
        assert len(line) < 300 and "\x00" not in line and "\x1b" not in line
        assert "DECOY" not in out + err
    assert tree(tmp_path) == before


def test_bad_snapshot_ids_through_the_command_line(repo: Path, tmp_path: Path) -> None:
    """CLI show/verify/restore with '../config', abs path, '.hidden', 300 chars: exit 1, one stderr line, no stdout."""
    plant_decoys(tmp_path, repo)
    before = tree(tmp_path)
    env = clean_env(tmp_path)
    for snapshot in ["../config", str(tmp_path / "decoy"), ".hidden", "9" * 300]:
        for verb, extra in (("show", []), ("verify", []), ("restore", ["--to-dir", tmp_path / "out"])):
            result = command([verb, snapshot, "--json", "--repo-dir", repo, *extra], env, cwd=tmp_path)
            assert (result.returncode, result.stdout) == (1, ""), result.stderr
            assert "is not a snapshot id" in one_line(result.stderr)
    assert tree(tmp_path) == before


def test_an_unknown_but_well_formed_id_says_no_snapshot(repo: Path, cli: Call) -> None:
    """A well-formed id that is not in the repository: exit 1, 'no snapshot ... (see `list`)'."""
    code, out, err = cli("show", "19990101T000000Z", "--repo-dir", repo)
    assert (code, out) == (1, "") and "no snapshot '19990101T000000Z'" in one_line(err) and "see `list`" in err


# --------------------------------------------------------------------------------------------
# 2. Restore targets
# --------------------------------------------------------------------------------------------


def test_to_dir_with_dot_dot_is_a_usage_error(pristine: Pristine, repo: Path, tmp_path: Path, cli: Call) -> None:
    """--to-dir 'a/../out': exit 2 'contains ..' naming the plain path (the API refuses it too), nothing created."""
    before = tree(tmp_path)
    code, out, err = cli("restore", pristine.new, "--repo-dir", repo, "--to-dir", f"{tmp_path}/a/../out")
    assert (code, out) == (2, "")
    assert "contains '..'" in err and f"{tmp_path}/out" in err
    with pytest.raises(restore.RestoreError, match=r"contains '\.\.'"):
        repository = Repository(DirStore(repo))
        restore.to_directory(repository, repository.load(pristine.new), tmp_path / "a" / ".." / "out")
    assert tree(tmp_path) == before


def test_to_dir_symlink_that_escapes_is_refused(pristine: Pristine, repo: Path, tmp_path: Path, cli: Call) -> None:
    """--to-dir a symlink to a directory elsewhere: exit 1 'is a symlink', the directory it points to stays empty."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    code, out, err = cli("restore", pristine.new, "--repo-dir", repo, "--to-dir", tmp_path / "link", "--force")
    assert (code, out) == (1, "") and "is a symlink" in one_line(err) and "nothing was written" in err
    assert list(elsewhere.iterdir()) == []


def test_forced_restore_never_follows_a_symlink_inside_the_target(
    pristine: Pristine, repo: Path, tmp_path: Path, cli: Call
) -> None:
    """--force into a dir holding symlink 'core' -> outside: exit 1 'would leave', nothing written in or out."""
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "core").symlink_to(outside)
    before = tree(tmp_path)
    code, out, err = cli("restore", pristine.new, "--repo-dir", repo, "--to-dir", target, "--force")
    assert (code, out) == (1, "") and "would leave" in one_line(err) and "nothing written" in err
    assert tree(tmp_path) == before


def test_to_dir_that_holds_data_or_is_a_file_is_refused(
    pristine: Pristine, repo: Path, tmp_path: Path, cli: Call
) -> None:
    """--to-dir non-empty (no --force), a file, in or at the repository: exit 1 with the reason, nothing changed."""
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    (tmp_path / "a-file").write_text("mine too")
    before = tree(tmp_path)
    for target, reason in (
        (occupied, "is not empty; choose an empty directory, or pass --force"),
        (tmp_path / "a-file", "exists and is not a directory"),
        (repo / "restored", "overlaps the repository"),
        (repo, "overlaps the repository"),
    ):
        code, out, err = cli("restore", pristine.new, "--repo-dir", repo, "--to-dir", target, "--json")
        assert (code, out) == (1, "") and reason in one_line(err), err
    code, _, err = cli("restore", pristine.new, "--repo-dir", repo, "--to-dir", repo, "--force")
    assert code == 1 and "overlaps the repository" in err
    assert tree(tmp_path) == before


def test_to_file_targets_are_checked_before_writing(repo: Path, tmp_path: Path, cli: Call) -> None:
    """--to-file onto a file, a dir, missing parent, the repo: exit 1; with '..': exit 2; nothing written first."""
    data = add_raft_snapshot(repo, "20200101T000000Z")
    (tmp_path / "existing.snap").write_bytes(b"precious")
    before = tree(tmp_path)
    for target, force, code, reason in (
        (tmp_path / "existing.snap", [], 1, "exists; choose another file, or pass --force"),
        (tmp_path, ["--force"], 1, "is a directory"),
        (tmp_path / "missing" / "x.snap", ["--force"], 1, "does not exist; create it first"),
        (repo / "objects" / "raft" / "20200101T000000Z.snap", ["--force"], 1, "overlaps the repository"),
        (f"{tmp_path}/missing/../x.snap", [], 2, "contains '..'"),
    ):
        outcome = cli("restore", "20200101T000000Z", "--repo-dir", repo, "--to-file", target, *force)
        assert outcome[:2] == (code, "") and reason in outcome[2], (target, outcome)
    assert tree(tmp_path) == before
    assert cli("restore", "20200101T000000Z", "--repo-dir", repo, "--to-file", tmp_path / "good.snap")[0] == 0
    assert (tmp_path / "good.snap").read_bytes() == data
    assert {p.name for p in tmp_path.iterdir()} - {"data"} == {"existing.snap", "good.snap", "repo"}


def test_to_file_with_a_tampered_archive_leaves_nothing(repo: Path, tmp_path: Path, cli: Call) -> None:
    """--to-file from an altered raft archive: exit 1 'does not match the manifest', no file, no partial file."""
    data = add_raft_snapshot(repo, "20200101T000000Z")
    (repo / "objects" / "raft" / "20200101T000000Z.snap").write_bytes(bytes(reversed(data)))
    (tmp_path / "out").mkdir()
    code, out, err = cli("restore", "20200101T000000Z", "--repo-dir", repo, "--to-file", tmp_path / "out" / "x.snap")
    assert (code, out) == (1, "") and "does not match the manifest" in one_line(err)
    assert list((tmp_path / "out").iterdir()) == []


BAD_CONTAINER_NAMES = ["../x", "UPPER", "a", "ab", "a/b", "x" * 64, "a--b", "-ab", "ab-", "$root", "vault_restore"]


def test_invalid_container_names_are_refused_before_any_request(
    azurite: Azurite, pristine: Pristine, repo: Path, tmp_path: Path
) -> None:
    """--to-container '../x', 'UPPER', 'a', 'a/b', 64 chars...: exit 2 citing Azure's rules, no request made."""
    containers = {c.name for c in azurite.service.list_containers()}
    env = clean_env(tmp_path, **pristine.source_env)
    for name in BAD_CONTAINER_NAMES:
        result = command(["restore", pristine.new, "--repo-dir", repo, f"--to-container={name}", "--json"], env)
        assert (result.returncode, result.stdout) == (2, ""), (name, result.stderr)
        assert "is not a valid container name; Azure's rules: 3 to 63 characters" in result.stderr, result.stderr
    assert {c.name for c in azurite.service.list_containers()} == containers


def test_manifest_names_that_would_escape_the_target_are_refused_before_writing(
    pristine: Pristine, repo: Path, tmp_path: Path, cli: Call
) -> None:
    """Manifest entry '../../evil', abs, NUL, 'a' + 'a/b': restore --to-dir exit 1, nothing written anywhere."""
    first = json.loads(manifest_path(repo, pristine.new).read_bytes())["entries"][0]
    before = tree(tmp_path)
    for names, reason in (
        (["../../evil"], "would leave"),
        (["ok/../../../evil"], "would leave"),
        ([f"{tmp_path}/evil"], "would leave"),
        (["evil\x00"], "is not a file path"),
        (["a", "a/b"], "cannot both be files in a directory"),
    ):
        original = manifest_path(repo, pristine.new).read_bytes()
        edit_manifest(
            repo, pristine.new, lambda m, names=names: m["entries"].extend({**first, "name": n} for n in names)
        )
        code, out, err = cli("restore", pristine.new, "--repo-dir", repo, "--to-dir", tmp_path / "deep" / "out")
        assert (code, out) == (1, "") and reason in one_line(err) and "nothing written" in err, (names, err)
        manifest_path(repo, pristine.new).write_bytes(original)
        assert tree(tmp_path) == before
    assert not list(tmp_path.parent.glob("evil*"))


# --------------------------------------------------------------------------------------------
# 3. Damaged or tampered manifests, config and objects
# --------------------------------------------------------------------------------------------


Damage = Callable[[bytes], bytes]


def _json(change: Callable[[dict[str, Any]], Any]) -> Damage:
    """Damage to the parsed manifest, written back as JSON."""

    def apply(raw: bytes) -> bytes:
        data = json.loads(raw)
        change(data)
        return json.dumps(data).encode()

    return apply


def _set(path: str, value: Any) -> Damage:
    """Set data[a][b]... (integer parts index lists) to value."""

    def change(data: Any) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for part in parents:
            data = data[part]
        data[last] = value

    return _json(change)


DAMAGE: list[tuple[str, Damage, str]] = [  # label, how, what the error must say
    ("invalid JSON", lambda raw: b"{not json" + raw, "not readable JSON"),
    ("truncated", lambda raw: raw[: len(raw) // 2], "not readable JSON"),
    ("empty file", lambda raw: b"", "not readable JSON"),
    ("not UTF-8", lambda raw: b"\xff\xfe" + raw, "not readable JSON"),
    ("a list", lambda raw: b"[]", "not a JSON object"),
    ("wrong format", _set("format", "restic"), "'format' is 'restic', not 'vaultfn-backup'"),
    ("newer version", _set("version", 2), "manifest version 2 is newer than this tool (1); upgrade it"),
    ("version as text", _set("version", "1"), "'version' is '1', not a whole number"),
    ("no version", _json(lambda data: data.pop("version")), "'version' is missing"),
    ("no entries", _json(lambda data: data.pop("entries")), "'entries' is missing"),
    ("no time", _json(lambda data: data.pop("time")), "'time' is missing"),
    ("time not a time", _set("time", "yesterday"), "'time' is 'yesterday', not a UTC time"),
    ("entries not a list", _set("entries", {"a": 1}), "'entries' is {'a': 1}, not a list"),
    ("entry not an object", _set("entries.0", "core/keyring"), "entry 0 is 'core/keyring', not an object"),
    ("size as a string", _set("entries.0.size", "1210"), "'size' is '1210', not a whole number"),
    ("negative size", _set("entries.0.size", -1), "'size' is -1, not a whole number"),
    ("md5 not hex", _set("entries.0.md5", "x" * 32), "not 32 lowercase hex digits"),
    ("object outside objects/", _set("entries.0.object", "objects/../config.json"), "not a key under objects/"),
    ("object elsewhere", _set("entries.0.object", "/etc/passwd"), "not a key under objects/"),
    ("two entries, one name", _json(lambda data: data["entries"].append(data["entries"][0])), "two entries are named"),
    ("another snapshot's id", _set("id", "20000101T000000Z"), "its 'id' is '20000101T000000Z'"),
    ("converged as text", _set("converged", "yes"), "'converged' is 'yes', not true or false"),
]


@pytest.mark.parametrize(("label", "how", "problem"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_manifest_is_refused_everywhere_and_prune_deletes_nothing(
    label: str, how: Damage, problem: str, pristine: Pristine, repo: Path, tmp_path: Path, cli: Call
) -> None:
    """Damaged manifest: show/list/verify/restore/prune exit 1 naming it, prune deletes nothing, run still works."""
    damaged = manifest_path(repo, pristine.new)
    damaged.write_bytes(how(damaged.read_bytes()))
    name = f"snapshots/{pristine.new}.json"
    before = tree(repo)

    for args in (["show", pristine.new], ["restore", pristine.new, "--to-dir", tmp_path / "out"]):
        code, out, err = cli(*args, "--json", "--repo-dir", repo)
        line = one_line(err)
        assert (code, out) == (1, ""), err
        assert name in line and problem in line and "restore another snapshot" in line, line
    code, out, err = cli("list", "--json", "--repo-dir", repo)
    assert code == 1 and [s["id"] for s in json.loads(out)] == [pristine.old]
    assert name in one_line(err) and problem in err
    for args in (["verify"], ["verify", pristine.new]):
        code, out, err = cli(*args, "--json", "--repo-dir", repo)
        result = json.loads(out)
        assert code == 1 and not result["ok"], err
        assert [p["object"] for p in result["problems"]] == [name] and problem in result["problems"][0]["reason"]
    for args in (["prune"], ["prune", "--dry-run"]):
        code, out, err = cli(*args, "--json", "--repo-dir", repo, **KEEP_ONE)
        assert (code, out) == (1, "") and "prune deleted nothing" in one_line(err) and name in err, err
    assert tree(repo) == before
    assert not (tmp_path / "out").exists()

    code, out, err = cli("run", "--json", "--repo-dir", repo, **pristine.source_env)
    assert code == 0, err
    assert f"warning: this run did not build on {name}" in one_line(err)
    after = tree(repo)
    assert {key: after.get(key) for key in before if key != "locks/repository"} == {
        key: value for key, value in before.items() if key != "locks/repository"
    }
    repository = Repository(DirStore(repo))
    newest = repository.load(json.loads(out)["id"])
    assert len(newest.entries) == 20 and verify(repository, [newest]).ok


def test_a_damaged_manifest_in_a_container_repository_stops_prune(
    azurite: Azurite, pristine: Pristine, cli: Call
) -> None:
    """Blob-container repository, newest manifest not JSON: verify and prune exit 1, no blob deleted or changed."""
    container = new_container(azurite, "repo")
    env = {**pristine.source_env, "BACKUP_CONNECTION_STRING": azurite.connection_string}
    env["BACKUP_CONTAINER"] = container.container_name
    first, second = (json.loads(cli("run", "--json", **env)[1])["id"] for _ in range(2))
    container.get_blob_client(f"snapshots/{second}.json").upload_blob(b"{damaged", overwrite=True)
    before = {b.name: (b.etag, b.size) for b in container.list_blobs() if b.name != "locks/repository"}
    code, out, _ = cli("verify", "--json", **env)
    assert code == 1 and [p["object"] for p in json.loads(out)["problems"]] == [f"snapshots/{second}.json"]
    code, out, err = cli("prune", **env, **KEEP_ONE)
    assert (code, out) == (1, "") and "prune deleted nothing" in one_line(err) and f"{second}.json" in err
    assert {b.name: (b.etag, b.size) for b in container.list_blobs() if b.name != "locks/repository"} == before
    assert first in cli("list", **env)[1]
    container.delete_container()


def test_a_stray_file_in_snapshots_stops_prune(pristine: Pristine, repo: Path, cli: Call) -> None:
    """snapshots/<not an id>.json: list and verify report it (exit 1), prune exits 1 and deletes nothing."""
    shutil.copy(manifest_path(repo, pristine.new), repo / "snapshots" / "copy of new.json")
    before = tree(repo)
    code, _, err = cli("list", "--repo-dir", repo)
    assert code == 1 and "snapshots/copy of new.json" in one_line(err) and "file name is not a snapshot id" in err
    code, out, _ = cli("verify", "--repo-dir", repo)
    assert code == 1 and "snapshots/copy of new.json: manifest not valid: its file name is not a snapshot id" in out
    code, _, err = cli("prune", "--repo-dir", repo, **KEEP_ONE)
    assert code == 1 and "prune deleted nothing" in one_line(err)
    assert tree(repo) == before


@pytest.mark.parametrize(
    "config", [b"not json", b"[]", b'{"format": "restic", "version": 2}', b'{"format": "vaultfn-backup"}']
)
def test_a_damaged_config_stops_run_and_prune(pristine: Pristine, repo: Path, config: bytes, cli: Call) -> None:
    """Damaged config.json: run and prune exit 1 naming it and the fix, nothing written or deleted."""
    (repo / "config.json").write_bytes(config)
    before = tree(repo)
    code, out, err = cli("run", "--repo-dir", repo, **pristine.source_env)
    assert (code, out) == (1, "") and "holds something else than a vaultfn-backup repository" in one_line(err)
    assert "config.json" in err and '{"format": "vaultfn-backup", "version": 1}' in err
    code, out, err = cli("prune", "--repo-dir", repo, **KEEP_ONE)
    assert (code, out) == (1, "") and "config.json" in one_line(err)
    assert tree(repo) == before


def test_a_missing_or_altered_object_is_reported_and_stops_restore(
    pristine: Pristine, repo: Path, tmp_path: Path, cli: Call
) -> None:
    """Object lost or altered: verify exit 1 naming both, restore exit 1 writing nothing, prune deletes nothing."""
    lost, altered = unique_entries(repo, pristine)[:2]
    (repo / lost.object).unlink()
    stored = (repo / altered.object).read_bytes()
    (repo / altered.object).write_bytes(bytes(b ^ 0xFF for b in stored))
    before = tree(repo)

    code, out, err = cli("verify", pristine.new, "--json", "--repo-dir", repo)
    problems = {p["object"]: (p["names"], p["reason"]) for p in json.loads(out)["problems"]}
    assert code == 1 and problems[lost.object] == ([lost.name], "missing")
    assert problems[altered.object][1].startswith("MD5 ") and len(problems) == 2
    code, out, err = cli("verify", "--repo-dir", repo)
    assert code == 1 and "2 PROBLEM(S); restore only from snapshots without problems" in out

    code, out, err = cli("restore", pristine.new, "--repo-dir", repo, "--to-dir", tmp_path / "out")
    line = one_line(err)
    assert (code, out) == (1, "") and "run `verify`" in line and "nothing was written to" in line
    assert ("is missing from the repository" in line) or ("does not match the manifest" in line)
    assert {p.name for p in tmp_path.iterdir()} - {"data"} == {"repo"}  # no target, no half-restored sibling

    assert cli("show", pristine.new, "--repo-dir", repo)[0] == 0
    code, out, _ = cli("prune", "--json", "--repo-dir", repo)
    assert code == 0 and json.loads(out)["objects_deleted"] == 0
    assert tree(repo) == before
    code, out, err = cli("restore", pristine.old, "--repo-dir", repo, "--to-dir", tmp_path / "old", "--json")
    assert code == 0 and json.loads(out)["objects"] == 20, err


@pytest.mark.xfail(strict=True, reason="backup.py reuses an unchanged blob's previous entry by ETag, unchecked")
def test_a_run_after_an_object_was_lost_stores_it_again(pristine: Pristine, repo: Path, cli: Call) -> None:
    """Object lost, then a run: the new snapshot should store it again (KNOWN GAP: it reuses the lost object)."""
    lost = unique_entries(repo, pristine)[0]
    (repo / lost.object).unlink()
    code, out, err = cli("run", "--json", "--repo-dir", repo, **pristine.source_env)
    assert code == 0, err
    repository = Repository(DirStore(repo))
    assert verify(repository, [repository.load(json.loads(out)["id"])]).ok


# --------------------------------------------------------------------------------------------
# 4. Connection strings and credentials
# --------------------------------------------------------------------------------------------

WRONG_KEY = base64.b64encode(b"distinctive-wrong-key-7c1e0b9a5d").decode()
NOT_BASE64 = "not*base64*secret*91b3f0"
GARBAGE = "garbage-secret-4f2d8e61-connection-string"


def connection_strings(azurite: Azurite) -> dict[str, tuple[str, int, str]]:
    """label: (connection string, exit code, what stderr must say)."""
    endpoint = f"BlobEndpoint={azurite.blob_endpoint};"
    dead = f"BlobEndpoint=http://127.0.0.1:{free_port()}/{ACCOUNT};"
    account = f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};"
    return {
        "garbage": (GARBAGE, 2, "connection string is not valid"),
        "no AccountKey": (account + endpoint, 2, "storage refused the credentials"),
        "key not base64": (f"{account}AccountKey={NOT_BASE64};{endpoint}", 2, "is not base64"),
        "wrong key": (f"{account}AccountKey={WRONG_KEY};{endpoint}", 2, "storage refused the credentials"),
        "wrong endpoint": (f"{account}AccountKey={ACCOUNT_KEY};{dead}", 1, "storage request failed"),
    }


@pytest.mark.parametrize("label", ["garbage", "no AccountKey", "key not base64", "wrong key", "wrong endpoint"])
def test_a_bad_connection_string_is_one_clear_line_without_the_secret(
    label: str, azurite: Azurite, pristine: Pristine, tmp_path: Path
) -> None:
    """Bad connection string (garbage, no/bad/wrong key, wrong endpoint): exit 2 (1), one line, secret never shown."""
    value, expected, says = connection_strings(azurite)[label]
    repository = clean_env(tmp_path, BACKUP_CONNECTION_STRING=value, BACKUP_CONTAINER="repo", **pristine.source_env)
    source = clean_env(
        tmp_path, BACKUP_DIR=str(tmp_path / "dir-repo"), AZURE_BLOB_CONTAINER=pristine.source.container_name
    )
    source["AZURE_STORAGE_CONNECTION_STRING"] = value
    for env, verb, setting, other in (
        (repository, "list", "BACKUP_CONNECTION_STRING", "AZURE_STORAGE"),
        (source, "run", "AZURE_STORAGE_CONNECTION_STRING", "BACKUP_"),
    ):
        result = command([verb, "--json"], env)
        line = one_line(result.stderr)
        assert (result.returncode, result.stdout) == (expected, ""), result.stderr
        assert says in line and setting in line and other not in line, line
        for secret in (value, WRONG_KEY, NOT_BASE64, GARBAGE, ACCOUNT_KEY):
            assert secret not in result.stdout + result.stderr


def test_missing_credentials_and_destination_are_configuration_errors(
    pristine: Pristine, repo: Path, tmp_path: Path
) -> None:
    """No account or connection string, no destination, bad AZURE_STORAGE_KEY: exit 2, one line naming the setting."""
    template = str(REPO / "config" / "local.hcl.tpl")
    cases = [
        (["list"], {"BACKUP_CONTAINER": "repo"}, "BACKUP_ACCOUNT_NAME"),
        (["run"], {"AZURE_BLOB_CONTAINER": "vault", "BACKUP_DIR": str(tmp_path / "r")}, "AZURE_ACCOUNT_NAME"),
        (["list"], {"FUNCTIONS_CUSTOMHANDLER_PORT": "7071", "VAULT_CONFIG_TEMPLATE": template}, "BACKUP_DIR"),
        (
            ["restore", pristine.new, "--repo-dir", repo, "--to-container", "vault-restore-x"],
            {"AZURE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_KEY": NOT_BASE64},
            "AZURE_STORAGE_KEY",
        ),
    ]
    for args, extra, names in cases:
        result = command([*args, "--json"], clean_env(tmp_path, **extra))
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert names in one_line(result.stderr) and NOT_BASE64 not in result.stderr
    assert not (tmp_path / "r").exists()


def test_a_bad_sample_is_a_usage_error(repo: Path, cli: Call) -> None:
    """verify --sample 0, -3 or 'many': exit 2 'not a whole number of 1 or more'."""
    for sample in ("0", "-3", "many"):
        code, out, _ = cli("verify", "--sample", sample, "--repo-dir", repo)
        assert (code, out) == (2, "")
