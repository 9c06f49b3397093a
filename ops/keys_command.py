"""``objmail keys new|list|add|status|rotate``: the installation's keyring.

* ``keys new [--out FILE]`` writes a fresh keyring (an id secret and encryption key 1,
  current), mode 0600; it never overwrites a file.  FILE defaults to
  ``director.keyring_file``, else ``./objmail-keyring.toml``.
* ``keys list`` shows the key ids of ``director.keyring_file``, which is current, and
  their fingerprints (what the installation records in Redis); never a secret.
* ``keys add [--current]`` adds an encryption key (the next id) to the keyring.  With
  several frontends: add it, copy the file to every frontend and restart them, then
  make it current (``keys rotate --no-new-key`` after editing ``current``, or add it with
  ``--current`` in the first place when there is one frontend).
* ``keys status`` scans the index and counts the copies under each key id and in
  plaintext (reading each copy's flags, not its bytes), and shows a rotation run in
  progress.  An old key may leave the keyring only once this shows nothing under it.
* ``keys rotate [--no-new-key] [--rate BYTES] [--status | --cancel]`` adds a new key as
  current (unless ``--no-new-key``, or a run is in progress: it resumes), then runs the
  re-encryption job (:mod:`director.rekeyer`) in the foreground under its lease: every
  copy under another key, the legacy key or in plaintext is verified and sealed again
  under the current key, no blob id or message changed.  Ctrl-C stops after the page in
  hand; running it again resumes.  Exits 0 when every copy is under the current key, 75
  when some could not be (unreachable, changed meanwhile, bad: run it again).

Exits 78 for a keyring problem: none configured, missing, readable by others, not the
installation's, or lacking a key some copy is sealed under.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from director.client import BlobClient
from director.keyring import Keyring, KeyringError, fingerprint, load_keyring, write_keyring
from director.rekeyer import PLAINTEXT, RUN_FIELDS, Census, Rekeyer, RekeyStats, census
from ops.cli import EX_CONFIG, EX_OK, EX_TEMPFAIL, EX_USAGE, CommandContext
from ops.config import ConfigError
from ops.jobrun import (
    CLI_RETRY,
    EX_INTERRUPTED,
    ProgressLine,
    StopFlag,
    add_run_arguments,
    cancel_run,
    human,
    parse_rate,
    run_job,
    when,
)

#: Where ``keys new`` writes when neither ``--out`` nor ``director.keyring_file`` says.
DEFAULT_OUT = "objmail-keyring.toml"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("keys", help="the keyring: blob ids and encryption (new, list, "
                                         "add, status, rotate)")
    keys = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    new = keys.add_parser("new", help="write a fresh keyring (mode 0600, never overwrites)")
    new.add_argument("--out", metavar="FILE", help="where (default: director.keyring_file, "
                                                   f"else ./{DEFAULT_OUT})")
    new.set_defaults(handler=new_keyring)
    listing = keys.add_parser("list", help="key ids, which is current (no secrets)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=list_keys)
    add = keys.add_parser("add", help="add an encryption key to the keyring")
    add.add_argument("--current", action="store_true",
                     help="make it the key new values are sealed with")
    add.set_defaults(handler=add_key)
    status = keys.add_parser("status", help="copies under each key id / in plaintext "
                                            "(a scan of the index)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=key_status)
    rotate = keys.add_parser("rotate", help="add a new current key and re-encrypt every "
                                            "copy under it (resumable)")
    rotate.add_argument("--no-new-key", action="store_true",
                        help="re-encrypt under the current key without adding one")
    add_run_arguments(rotate, "read and write at most this much per second (e.g. 50M; "
                              "default: no limit)")
    rotate.set_defaults(handler=rotate_keys)


def _configured(ctx: CommandContext) -> Path:
    """The keyring the config names.

    :raises KeyringError: none is configured.
    """
    path = ctx.config.director.keyring_file
    if not path:
        raise KeyringError("not set: create a keyring with `objmail keys new --out FILE` "
                           "and name it in [director] keyring_file")
    return Path(path)


def new_keyring(ctx: CommandContext) -> int:
    out = Path(ctx.args.out or ctx.config.director.keyring_file or DEFAULT_OUT)
    try:
        write_keyring(out, Keyring.generate())
    except KeyringError as exc:
        ctx.warn(f"objmail: {exc.message}")
        return EX_CONFIG
    ctx.say(f"wrote a new keyring to {out} (mode 0600; encryption key 1 is current)")
    if Path(ctx.config.director.keyring_file or "") != out:
        ctx.say(f'set in [director]:  keyring_file = "{out.resolve()}"')
    ctx.say("keep a copy offline: without it no stored blob can be read")
    return EX_OK


def list_keys(ctx: CommandContext) -> int:
    path = _configured(ctx)
    keyring = load_keyring(path)
    rows: list[dict[str, Any]] = [
        {"key_id": kid, "current": kid == keyring.current,
         "fingerprint": fingerprint(key)} for kid, key in sorted(keyring.keys.items())]
    legacy = ctx.config.director.encryption_key_file
    if ctx.args.json:
        ctx.say(json.dumps({"keyring": str(path), "id_fingerprint": fingerprint(
            keyring.id_key), "keys": rows, "legacy_key_file": legacy or None}, indent=2))
        return EX_OK
    ctx.say(f"keyring {path}: id key {fingerprint(keyring.id_key)}")
    for row in rows:
        mark = "  (current)" if row["current"] else ""
        ctx.say(f"  key {row['key_id']:>5}  {row['fingerprint']}{mark}")
    if legacy:
        ctx.say(f"  key     0  legacy director.encryption_key_file {legacy} (read only)")
    return EX_OK


def add_key(ctx: CommandContext) -> int:
    path = _configured(ctx)
    grown, kid = load_keyring(path).with_new_key(make_current=ctx.args.current)
    write_keyring(path, grown, replace=True)
    ctx.say(f"{path}: added encryption key {kid}"
            + (" (current)" if ctx.args.current else f"; key {grown.current} stays current"))
    ctx.say("copy the keyring to every frontend and restart them before any of them makes "
            "this key current")
    return EX_OK


def key_status(ctx: CommandContext) -> int:
    keyring = load_keyring(_configured(ctx))

    async def work(client: BlobClient, _stop: StopFlag) -> int:
        line = ProgressLine(ctx, "keys status")

        def progress(found: Census, done: int, total: int) -> None:
            line.show(f"{done}/{total} buckets, {found.copies} copies")

        try:
            found = await census(client, progress=progress)
        finally:
            line.done()
        run = await Rekeyer(client).status()
        recorded = client.keys.recorded_key_ids()
        report_status(ctx, keyring, found, run, recorded)
        return EX_OK

    return run_job(ctx, work)


def report_status(ctx: CommandContext, keyring: Keyring, found: Census,
                  run: dict[str, Any], recorded: list[int]) -> None:
    have = {*keyring.keys, *((0,) if ctx.config.director.encryption_key_file else ())}
    lacking = sorted(k for k in found.by_key if k != PLAINTEXT and int(k) not in have)
    if ctx.args.json:
        ctx.say(json.dumps({"current": keyring.current, "keyring": sorted(keyring.keys),
                            "recorded": recorded, "blobs": found.blobs,
                            "copies": found.copies, "by_key": found.by_key,
                            "missing": found.missing, "unreachable": found.unreachable,
                            "unreadable": found.unreadable, "lacking": lacking,
                            "rotation": run}, indent=2))
        return
    ctx.say(f"{found.blobs} blob(s), {found.copies} cop(ies); by key:")
    for label in sorted(found.by_key, key=lambda k: int(k) if k != PLAINTEXT else -1):
        if label == PLAINTEXT:
            what = "plaintext"
        elif label == "0":
            what = "key 0 (legacy encryption_key_file)"
        else:
            what = f"key {label}" + (" (current)" if int(label) == keyring.current else "")
        ctx.say(f"  {what:<36} {found.by_key[label]:>10}")
    if found.missing or found.unreachable or found.unreadable:
        ctx.say(f"  not counted: {found.missing} missing, {found.unreachable} unreachable, "
                f"{found.unreadable} unreadable")
    if lacking:
        ctx.warn(f"warning: copies are sealed under key(s) {', '.join(lacking)}, which this "
                 "keyring lacks: they cannot be read here")
    if run.get("running"):
        ctx.say(f"a rotation run (to key {run.get('target', 0):.0f}) is in progress since "
                f"{when(run['started_at'])}: {run.get('cursor', 0)} buckets done; "
                "objmail keys rotate resumes it")
    elif run.get("last_finished"):
        ctx.say(f"last rotation run finished {when(run['last_finished'])}: "
                f"{run.get('last_rewritten', 0):.0f} cop(ies) re-encrypted to key "
                f"{run.get('last_target', 0):.0f}, {run.get('last_left', 0):.0f} left")


def rotate_keys(ctx: CommandContext) -> int:
    try:
        rate = parse_rate(ctx.args.rate)
    except ConfigError as exc:
        ctx.warn(f"objmail: {exc}")
        return EX_USAGE
    path = _configured(ctx)
    load_keyring(path)  # a bad keyring is reported before anything else is done

    async def work(client: BlobClient, stop: StopFlag) -> int:
        rekeyer = Rekeyer(client, rate=rate)
        fields = await rekeyer.status()
        if ctx.args.status:
            ctx.say(json.dumps(fields, indent=2) if ctx.args.json else _run_line(fields))
            return EX_OK
        if ctx.args.cancel:
            return await cancel_run(ctx, rekeyer, [*RUN_FIELDS, *(
                k for k in fields if k.startswith("found:"))])
        if fields["running"] or ctx.args.no_new_key:
            return await rotate(ctx, rekeyer, stop)
        grown, kid = load_keyring(path).with_new_key(make_current=True)
        write_keyring(path, grown, replace=True)
        ctx.say(f"{path}: added encryption key {kid}, now current; copy the keyring to "
                "every frontend and restart them")
        # A client of the grown keyring: it records the new key, then seals with it.
        fresh = await BlobClient.open(ctx.config.cluster, ctx.config.director,
                                      retry=CLI_RETRY, auth=ctx.credentials.redis)
        try:
            return await rotate(ctx, Rekeyer(fresh, rate=rate), stop)
        finally:
            await fresh.aclose()

    return run_job(ctx, work)


def _run_line(fields: dict[str, Any]) -> str:
    if fields["running"]:
        return (f"rekey: a run to key {fields.get('target', 0):.0f} is in progress since "
                f"{when(fields['started_at'])}: {fields.get('cursor', 0)} buckets, "
                f"{fields.get('rewritten', 0):.0f} cop(ies) re-encrypted so far")
    last = fields.get("last_finished")
    return "rekey: no run in progress" + (
        f"; the last finished {when(last)}, {fields.get('last_left', 0):.0f} left"
        if last else "")


async def rotate(ctx: CommandContext, rekeyer: Rekeyer, stop: StopFlag) -> int:
    line = ProgressLine(ctx, "rekey")

    def progress(stats: object) -> None:
        assert isinstance(stats, RekeyStats)
        line.show(f"{stats.buckets_done}/{stats.buckets} buckets, {stats.copies} copies, "
                  f"{stats.rewritten} re-encrypted ({human(stats.bytes)})")

    try:
        stats = await rekeyer.run_once(stop=stop, progress=progress)
    finally:
        line.done()
    if ctx.args.json:
        ctx.say(json.dumps(stats.as_json(), indent=2))
    else:
        head = "done" if stats.finished else (
            f"stopped at {stats.buckets_done}/{stats.buckets} buckets; run objmail keys "
            "rotate again to resume")
        ctx.say(f"rekey to key {stats.target}: {head}: {stats.items} blob(s), "
                f"{stats.copies} cop(ies): {stats.rewritten} re-encrypted "
                f"({human(stats.bytes)} moved), {stats.current} already under it; "
                f"{stats.corrupt} corrupt and {stats.missing} missing (queued for repair), "
                f"{stats.unreachable} unreachable, {stats.raced} changed meanwhile")
        if stats.left and stats.examples:
            ctx.say(f"left behind e.g. {', '.join(stats.examples[:3])}: run it again")
    if stop() or not stats.finished:
        return EX_INTERRUPTED
    return EX_OK if not stats.left else EX_TEMPFAIL
