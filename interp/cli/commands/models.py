"""``anydepth models``: list the catalogue models and verify / convert them into the cache."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)  # accepted before or after the action
    common.add_argument("--cache-dir", default=argparse.SUPPRESS,
                        help="model cache (default $ANYDEPTH_CACHE or ~/.cache/anydepth)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON, not a table")
    p = subparsers.add_parser("models", parents=[common],
                              help="list catalogue models; verify (assemble, sha256, convert) them")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", parents=[common], help="catalogue models and whether they are cached (default)")
    verify = sub.add_parser("verify", parents=[common],
                            help="download/assemble, check the sha256, convert to the cache, time a load")
    verify.add_argument("names", nargs="*", metavar="NAME", help="catalogue names or aliases (default: the default)")
    verify.add_argument("--all", action="store_true", help="verify every catalogue model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from interp.model.catalogue import CATALOGUE, DEFAULT_MODEL
    from interp.model.describe import catalogue_table, verification_line
    from interp.model.loading import catalogue_status, describe_cache, verify_catalogue

    action = getattr(args, "action", None) or "list"
    cache_dir, as_json = getattr(args, "cache_dir", None), getattr(args, "json", False)
    if action == "list":
        rows = catalogue_status(cache_dir)
        print(json.dumps(rows, indent=2) if as_json else "\n".join(catalogue_table(rows, describe_cache(cache_dir))))
        return 0
    names = list(CATALOGUE) if getattr(args, "all", False) else (getattr(args, "names", None) or [DEFAULT_MODEL])
    records = []
    for name in names:
        records.append(verify_catalogue(name, cache_dir=cache_dir))
        if not as_json:
            print(verification_line(records[-1]))
    if as_json:
        print(json.dumps(records, indent=2))
    return 0
