"""The key ceremony behind `edgefleetctl keys …` (controller/ctl/keys.py): run on the
controller's data directory (or, for `sign` and `generate`, on the offline machine that
holds a root key)."""

from __future__ import annotations

import argparse
import shutil

from edgefleet.controller.app.datadir import DataDir
from edgefleet.controller.trust import rootkeys
from edgefleet.controller.trust.keyring import load_private_keys
from edgefleet.errors import ConfigError
from edgefleet.trust.keys import PublicKey, SigningKey
from edgefleet.trust.metadata import Root


def _data(args: argparse.Namespace) -> DataDir:
    data = DataDir(args.data_dir.resolve())
    if not data.keys.is_dir():
        raise ConfigError(f"{args.data_dir} is not a controller data directory")
    return data


def _print_draft(data: DataDir, root: Root) -> None:
    print(f"draft root version {root.version} (not yet published)")
    print(rootkeys.describe(root, set(load_private_keys(data.keys))))
    print("next: `edgefleetctl keys publish` (or export-draft / sign / import-signatures)")


def list_command(args: argparse.Namespace) -> int:
    data = _data(args)
    held = set(load_private_keys(data.keys))
    print(rootkeys.describe(rootkeys.current_root(data), held))
    draft = rootkeys.load_draft(data)
    if draft is not None:
        print()
        print(rootkeys.describe(Root.from_payload(draft.payload), held).replace("root", "draft", 1))
    print("(* = private key held in this data directory)")
    return 0


def generate_command(args: argparse.Namespace) -> int:
    key = SigningKey.generate()
    key.save(args.out)
    print(f"keyid  {key.keyid}")
    print(f"public {key.public.hex}")
    return 0


def _public(args: argparse.Namespace) -> PublicKey | None:
    return PublicKey.from_hex(args.public) if args.public else None


def add_command(args: argparse.Namespace) -> int:
    public = _public(args)
    if public is None:
        raise ConfigError("keys add needs --public HEX (make one with `keys generate`)")
    data = _data(args)
    _print_draft(data, rootkeys.add_key(data, args.role, public))
    return 0


def rotate_command(args: argparse.Namespace) -> int:
    data = _data(args)
    root, written = rootkeys.rotate_key(data, args.role, _public(args))
    if written:
        print(f"new {args.role} key written to {written}")
    _print_draft(data, root)
    return 0


def revoke_command(args: argparse.Namespace) -> int:
    data = _data(args)
    _print_draft(data, rootkeys.revoke_key(data, args.role, args.keyid))
    return 0


def threshold_command(args: argparse.Namespace) -> int:
    data = _data(args)
    _print_draft(data, rootkeys.set_threshold(data, args.role, args.count))
    return 0


def renew_command(args: argparse.Namespace) -> int:
    data = _data(args)
    _print_draft(data, rootkeys.renew(data))
    return 0


def show_draft_command(args: argparse.Namespace) -> int:
    data = _data(args)
    status = rootkeys.draft_status(data)
    print(rootkeys.draft_json(data))
    print(f"signed by: {', '.join(k[:16] for k in status.signed_by) or 'nobody yet'}")
    print(f"missing:   {'; '.join(status.missing) or 'nothing (keys held here sign at publish)'}")
    return 0


def export_draft_command(args: argparse.Namespace) -> int:
    data = _data(args)
    if rootkeys.load_draft(data) is None:
        raise ConfigError("there is no draft to export")
    shutil.copyfile(rootkeys.draft_path(data), args.out)
    print(f"wrote {args.out}: sign it with `edgefleetctl keys sign {args.out.name} --key KEY`")
    return 0


def sign_command(args: argparse.Namespace) -> int:
    root = rootkeys.sign_draft_file(args.file, SigningKey.load(args.key))
    print(f"signed root version {root.version} draft in {args.file}")
    return 0


def import_signatures_command(args: argparse.Namespace) -> int:
    status = rootkeys.import_signatures(_data(args), args.file)
    missing = "; ".join(status.missing) or "nothing"
    print(f"draft signed by {len(status.signed_by)} key(s); missing: {missing}")
    return 0


def publish_command(args: argparse.Namespace) -> int:
    root = rootkeys.publish(_data(args))
    print(f"published root version {root.version}; devices follow it at their next sync")
    return 0
