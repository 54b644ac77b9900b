"""`python -m backup_timer run | list | show ID | verify [ID] | restore ID ... | prune`.

Exit codes: 0 done; 1 failed (nothing committed, problems found, restore
stopped); 2 usage or configuration error; 3 another run holds the repository
lock; 4 a snapshot was committed but did not converge (Vault kept writing).

2 is for what the command line or the settings get wrong, found before any
data is touched: an unknown verb or option, an invalid setting or connection
string, no destination, credentials storage refuses, a container name Azure's
rules forbid, a restore path with `..`. 1 is for what the repository or the
target refuse: a snapshot id that names no snapshot (malformed or not: the fix
is the same, pick one from `list`), a manifest that cannot be read, objects
that are missing or do not match, a target that holds data, is a symlink or
would be left by a blob name. Every error is one line on stderr, scrubbed of
the configured secrets; with --json, stdout holds only a result, never an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.scrub import Scrubber
from shared.settings import Settings, SettingsError

from . import restore
from .azure import ConfigurationError, vault_account_container
from .backup import BackupRefused
from .commands import REPOSITORY_ACCOUNT, VAULT_ACCOUNT, backup, naming, open_repository
from .prune import policy_of, prune
from .repository import UNREADABLE_HINT, ManifestError, RepositoryError
from .restore import RestoreError
from .stores import LockHeld, LockLost, StoreError
from .verify import ObjectMissing, Problem, verify

EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_NOT_CONVERGED = 1, 2, 3, 4
# Azure's rules: 3-63 characters, lowercase letters, digits and single hyphens, a letter or digit at each end.
CONTAINER_NAME = re.compile(r"(?=.{3,63}$)[a-z0-9]+(?:-[a-z0-9]+)*")
CONTAINER_RULES = (
    "Azure's rules: 3 to 63 characters, only lowercase letters, digits and hyphens, starting and ending with a "
    "letter or digit, no two hyphens in a row (e.g. vault-restore-1)"
)


def container_name(text: str) -> str:
    if not CONTAINER_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a valid container name; {CONTAINER_RULES}")
    return text


def target_path(text: str) -> Path:
    if not text or not text.isprintable():
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a path (empty, or with control characters)")
    if ".." in Path(text).parts:
        raise argparse.ArgumentTypeError(f"{text!r} contains '..'; give the path without it: {os.path.abspath(text)}")
    return Path(text)


def positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m backup_timer", description="Backups of Vault's storage.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("--repo-dir", type=Path, help="use this directory as the repository (default: settings)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("run", parents=[common], help="take a snapshot now")
    verbs.add_parser("list", parents=[common], help="list the committed snapshots")
    show = verbs.add_parser("show", parents=[common], help="show one snapshot's manifest")
    show.add_argument("id")
    verifying = verbs.add_parser("verify", parents=[common], help="re-read objects and check size and MD5")
    verifying.add_argument("id", nargs="?", help="one snapshot (default: all)")
    verifying.add_argument("--sample", type=positive, help="check only this many objects, chosen at random")
    restoring = verbs.add_parser("restore", parents=[common], help="restore a snapshot")
    restoring.add_argument("id")
    target = restoring.add_mutually_exclusive_group()
    target.add_argument(
        "--to-container", type=container_name, help="blob snapshot: a container in Vault's storage account"
    )
    target.add_argument("--to-dir", type=target_path, help="blob snapshot: one file per blob")
    target.add_argument("--to-file", type=target_path, help="raft snapshot: write the archive")
    target.add_argument("--to-vault", help="raft snapshot: a running Vault's address (token from VAULT_TOKEN)")
    restoring.add_argument("--force", action="store_true", help="write into a non-empty target / snapshot-force")
    pruning = verbs.add_parser("prune", parents=[common], help="apply the retention policy")
    pruning.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    return parser.parse_args(argv)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; silent otherwise (logs and pipes stay clean)."""
    if not sys.stderr.isatty():
        yield lambda _: None
        return
    from tqdm import tqdm  # noqa: PLC0415

    with tqdm(total=total, desc=description, unit="obj", file=sys.stderr) as bar:
        yield bar.update


def emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    print(json.dumps(payload, indent=1) if args.json else text)


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """One line on stderr, without the configured secrets (keys, connection strings, tokens)."""
    line = re.sub(r"\s*\n\s*", " ", Scrubber.from_environment(os.environ).text(message)).strip()
    print(f"backup: {line}", file=sys.stderr)
    return code


def storage_settings(error: Exception, args: argparse.Namespace, settings: Any) -> str:
    """The settings behind the storage request that failed: the repository's, Vault's, or (unclear) both."""
    repository = settings.destination_container if args.repo_dir is None else None
    vault = None
    if args.verb == "run" and settings.source == "blob":
        vault = settings.source_container
    elif args.verb == "restore" and not (args.to_dir or args.to_file or args.to_vault):
        vault = args.to_container or restore.default_container_name(args.id)
    text = str(error)
    named = [n for n in (repository, vault) if n and re.search(rf"/{re.escape(n)}(?:[/?\s'\"]|$)", text)]
    sides = [side for side in (repository, vault) if side and (side in named or not named)]
    described = {repository: REPOSITORY_ACCOUNT, vault: VAULT_ACCOUNT}
    return " or ".join(described[side] for side in sides) or "the storage settings"


def storage_failure(error: Exception, args: argparse.Namespace, settings: Any) -> int | None:
    """Report an Azure SDK error in one line naming the settings to check; None if `error` is not one."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError  # noqa: PLC0415 - only on failure

    if not isinstance(error, AzureError):
        return None
    where = storage_settings(error, args, settings)
    status = getattr(error, "status_code", None)
    code = getattr(error, "error_code", None)
    reason = next(iter(str(getattr(error, "reason", None) or error.message).splitlines()), "")
    reason = re.sub(r"\?[^\s'\")]*", "?...", reason)[:300]  # query strings may hold a SAS
    what = f"HTTP {status} {getattr(code, 'value', code) or ''}".strip() if status else type(error).__name__
    if isinstance(error, ClientAuthenticationError) or status in (401, 403):
        return fail(
            f"storage refused the credentials ({what}: {reason}); check the account key or SAS in {where}, "
            "or the managed identity's role (Storage Blob Data Contributor)",
            EXIT_USAGE,
        )
    return fail(f"storage request failed ({what}: {reason}); check {where}, and that storage is reachable")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env().backup
    except SettingsError as error:
        return fail(f"invalid setting {error}", EXIT_USAGE)
    try:
        repository = open_repository(settings, args.repo_dir)
        return VERBS[args.verb](args, settings, repository)
    except ConfigurationError as error:
        return fail(str(error), EXIT_USAGE)
    except restore.TargetInUse as error:
        return fail(str(error), EXIT_LOCKED)
    except LockHeld as error:  # a subclass (a restore target in use) says what is locked itself
        return fail(f"the repository is locked: {error}" if type(error) is LockHeld else str(error), EXIT_LOCKED)
    except (BackupRefused, RepositoryError, RestoreError, LockLost, StoreError, ObjectMissing) as error:
        return fail(str(error))
    except Exception as error:
        code = storage_failure(error, args, settings)
        if code is not None:
            return code
        print(Scrubber.from_environment(os.environ).text(traceback.format_exc()), file=sys.stderr, end="")
        return fail(f"unexpected {type(error).__name__} (a bug: please report it with the lines above): {error}")


def do_run(args: argparse.Namespace, settings: Any, repository: Any) -> int:

    with progress_bar("copying") as progress:
        result = backup(settings, repository, progress)
    for skipped in repository.skipped:
        fail(f"warning: this run did not build on {skipped.key}: {skipped.problem}; {UNREADABLE_HINT}", 0)
    summary = result.as_dict()
    emit(
        args,
        summary,
        f"snapshot {summary['id']}: {summary['entries']} entries, {summary['copied']} copied, "
        f"{summary['reused']} reused, {summary['bytes']} bytes, "
        f"{'converged' if summary['converged'] else 'NOT converged'} after {summary['passes']} pass(es), "
        f"{summary['duration_s']} s",
    )
    return 0 if summary["converged"] else EXIT_NOT_CONVERGED


def do_list(args: argparse.Namespace, settings: Any, repository: Any) -> int:
    manifests, unreadable = repository.scan()
    summaries = [manifest.summary() for manifest in manifests]
    lines = [f"{'id':<20} {'time':<21} {'source':<6} {'entries':>8} {'bytes':>12} converged"]
    lines += [
        f"{s['id']:<20} {s['time']:<21} {s['source']:<6} {s['entries']:>8} {s['bytes']:>12} {s['converged']}"
        for s in summaries
    ]
    emit(args, summaries, "\n".join(lines) if summaries or unreadable else f"no snapshots in {repository.description}")
    for error in unreadable:
        fail(str(error))
    return EXIT_FAILED if unreadable else 0


def do_show(args: argparse.Namespace, settings: Any, repository: Any) -> int:
    manifest = repository.load(args.id).as_dict()
    text = "\n".join(
        [f"{key}: {value}" for key, value in manifest.items() if key != "entries"]
        + [f"  {e['name']}  {e['size']}  {e['md5']}" for e in manifest["entries"]]
    )
    emit(args, manifest, text)
    return 0


def do_verify(args: argparse.Namespace, settings: Any, repository: Any) -> int:

    manifests, unreadable = repository.scan() if args.id is None else ([], [])
    if args.id is not None:
        try:
            manifests.append(repository.load(args.id))
        except ManifestError as error:
            unreadable.append(error)
    with progress_bar("verifying") as progress:
        result = verify(repository, manifests, args.sample, settings.parallelism, progress)
    result.problems[:0] = [Problem(error.key, (), f"manifest not valid: {error.problem}") for error in unreadable]
    lines = [f"{p.object}{' (' + ', '.join(p.names) + ')' if p.names else ''}: {p.reason}" for p in result.problems]
    status = "OK" if result.ok else f"{len(result.problems)} PROBLEM(S); restore only from snapshots without problems"
    lines.append(
        f"verified {result.objects} objects, {result.bytes} bytes, {len(result.snapshots)} snapshots: {status}"
    )
    emit(args, result.as_dict(), "\n".join(lines))
    return 0 if result.ok else EXIT_FAILED


def do_restore(args: argparse.Namespace, settings: Any, repository: Any) -> int:
    manifest = repository.load(args.id)
    if args.to_file:
        result = restore.to_file(repository, manifest, args.to_file, args.force)
    elif args.to_vault:
        if not settings.operator_token:
            return fail("--to-vault needs a token with sudo on sys/storage/raft in VAULT_TOKEN", EXIT_USAGE)
        result = restore.to_vault(repository, manifest, args.to_vault, settings.operator_token, args.force)
    elif args.to_dir:
        with progress_bar("restoring", len(manifest.entries)) as progress:
            result = restore.to_directory(repository, manifest, args.to_dir, args.force, progress)
    else:
        with naming(VAULT_ACCOUNT):
            target = vault_account_container(settings, args.to_container or restore.default_container_name(manifest.id))
        with progress_bar("restoring", len(manifest.entries)) as progress:
            result = restore.to_container(
                repository, manifest, target, args.force, settings.parallelism, progress, settings.lock_blob
            )
    emit(args, result.as_dict(), result.next_steps)
    return 0


def do_prune(args: argparse.Namespace, settings: Any, repository: Any) -> int:

    policy = policy_of(settings)
    result = prune(repository, policy, args.dry_run)
    verb = "would forget" if args.dry_run else "forgot"
    text = (
        f"{policy.describe()}: kept {len(result.kept)}, {verb} {len(result.forgotten)} snapshot(s) "
        f"{' '.join(result.forgotten)}; {result.objects_deleted} object(s), {result.bytes_deleted} bytes unreferenced"
    )
    emit(args, result.as_dict(), text)
    return 0


VERBS: dict[str, Callable[[argparse.Namespace, Any, Any], int]] = {
    "run": do_run,
    "list": do_list,
    "show": do_show,
    "verify": do_verify,
    "restore": do_restore,
    "prune": do_prune,
}


if __name__ == "__main__":
    sys.exit(main())
