"""`python -m backup_timer run | list | show ID | verify [ID] | restore ID ... | prune`.

Exit codes: 0 done; 1 failed (nothing committed, problems found, restore
stopped); 2 usage or configuration error; 3 another run holds the repository
lock; 4 a snapshot was committed but did not converge (Vault kept writing).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.settings import Settings, SettingsError

from . import restore
from .azure import ConfigurationError, vault_account_container
from .backup import BackupRefused
from .commands import backup, open_repository
from .prune import policy_of, prune
from .repository import RepositoryError
from .restore import RestoreError
from .stores import LockHeld, LockLost
from .verify import verify

EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_NOT_CONVERGED = 1, 2, 3, 4


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
    verifying.add_argument("--sample", type=int, help="check only this many objects, chosen at random")
    restoring = verbs.add_parser("restore", parents=[common], help="restore a snapshot")
    restoring.add_argument("id")
    target = restoring.add_mutually_exclusive_group()
    target.add_argument("--to-container", help="blob snapshot: a container in Vault's storage account")
    target.add_argument("--to-dir", type=Path, help="blob snapshot: one file per blob")
    target.add_argument("--to-file", type=Path, help="raft snapshot: write the archive")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env().backup
    except SettingsError as error:
        print(f"backup: invalid setting {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        repository = open_repository(settings, args.repo_dir)
        return VERBS[args.verb](args, settings, repository)
    except ConfigurationError as error:
        print(f"backup: {error}", file=sys.stderr)
        return EXIT_USAGE
    except LockHeld as error:
        print(f"backup: the repository is locked: {error}", file=sys.stderr)
        return EXIT_LOCKED
    except (BackupRefused, RepositoryError, RestoreError, LockLost) as error:
        print(f"backup: {error}", file=sys.stderr)
        return EXIT_FAILED


def do_run(args: argparse.Namespace, settings: Any, repository: Any) -> int:

    with progress_bar("copying") as progress:
        result = backup(settings, repository, progress)
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
    summaries = [manifest.summary() for manifest in repository.manifests()]
    lines = [f"{'id':<20} {'time':<21} {'source':<6} {'entries':>8} {'bytes':>12} converged"]
    lines += [
        f"{s['id']:<20} {s['time']:<21} {s['source']:<6} {s['entries']:>8} {s['bytes']:>12} {s['converged']}"
        for s in summaries
    ]
    emit(args, summaries, "\n".join(lines) if summaries else f"no snapshots in {repository.description}")
    return 0


def do_show(args: argparse.Namespace, settings: Any, repository: Any) -> int:
    manifest = repository.load(args.id).as_dict()
    text = "\n".join(
        [f"{key}: {value}" for key, value in manifest.items() if key != "entries"]
        + [f"  {e['name']}  {e['size']}  {e['md5']}" for e in manifest["entries"]]
    )
    emit(args, manifest, text)
    return 0


def do_verify(args: argparse.Namespace, settings: Any, repository: Any) -> int:

    manifests = [repository.load(args.id)] if args.id else repository.manifests()
    with progress_bar("verifying") as progress:
        result = verify(repository, manifests, args.sample, settings.parallelism, progress)
    lines = [f"{p.object} ({', '.join(p.names)}): {p.reason}" for p in result.problems]
    status = "OK" if result.ok else f"{len(result.problems)} PROBLEM(S)"
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
            print("backup: --to-vault needs a token with sudo on sys/storage/raft in VAULT_TOKEN", file=sys.stderr)
            return EXIT_USAGE
        result = restore.to_vault(repository, manifest, args.to_vault, settings.operator_token, args.force)
    elif args.to_dir:
        with progress_bar("restoring", len(manifest.entries)) as progress:
            result = restore.to_directory(repository, manifest, args.to_dir, args.force, progress)
    else:
        target = vault_account_container(settings, args.to_container or restore.default_container_name(manifest.id))
        with progress_bar("restoring", len(manifest.entries)) as progress:
            result = restore.to_container(repository, manifest, target, args.force, settings.parallelism, progress)
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
