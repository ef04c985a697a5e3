"""``anydepth datasets``: list the named datasets, verify their files (sha256 + row counts), or fetch them."""

from __future__ import annotations

import argparse
import json

from interp.data import DATA_ENV, dataset_names, list_datasets, load_dataset, verify_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("datasets", help="list named datasets or verify their files",
                              description=f"Files are read from ${DATA_ENV} (a mirror directory) or the "
                                          "download cache.")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    lst = sub.add_parser("list", help="name, rows, labels, responses, licence")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ver = sub.add_parser("verify", help="check presence, sha256 and row counts of local files")
    ver.add_argument("names", nargs="*", metavar="NAME", help="datasets to verify (default: all)")
    ver.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fetch = sub.add_parser("fetch", help="download files into the cache (sha256-checked); with "
                           f"${DATA_ENV} set, only check the mirror")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="datasets to fetch (default: all)")
    p.set_defaults(func=run, action="list", json=False)


def run(args: argparse.Namespace) -> int:
    from interp.data.describe import dataset_table, verification_lines

    if args.action == "fetch":
        for name in args.names or dataset_names():
            print(f"{name}: {len(load_dataset(name))} records")
        return 0
    if args.action == "verify":
        results = [verify_dataset(n) for n in (args.names or dataset_names())]
        print(json.dumps(results, indent=2) if args.json else "\n".join(verification_lines(results)))
        return 0 if all(r["ok"] for r in results) else 1
    print(json.dumps([vars(i) for i in list_datasets()], indent=2) if args.json else "\n".join(dataset_table()))
    return 0
