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


def _list(as_json: bool) -> int:
    infos = list_datasets()
    if as_json:
        print(json.dumps([vars(i) for i in infos], indent=2))
        return 0
    rows = [(i.name, str(i.n_rows), "+".join(i.labels), "yes" if i.has_response else "no", i.license)
            for i in infos]
    header = ("name", "rows", "labels", "responses", "license")
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header) - 1)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def _verify(names: list[str], as_json: bool) -> int:
    results = [verify_dataset(n) for n in (names or dataset_names())]
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for res in results:
            loaded = res["rows_loaded"]
            dropped = f", {res['rows_dropped']} dropped" if res["rows_dropped"] else ""
            print(f"{'OK  ' if res['ok'] else 'FAIL'} {res['name']}: {loaded if loaded is not None else '-'}"
                  f"/{res['rows_expected']} records{dropped}")
            for f in res["files"]:
                if not f["present"]:
                    problem = f"missing ({f['where']})"
                elif not f["sha256_ok"]:
                    problem = "sha256 mismatch"
                elif f["rows"] != f["expected_rows"]:
                    problem = f"{f['rows']} rows, expected {f['expected_rows']}"
                else:
                    continue
                print(f"     {f['path']}: {problem}")
    return 0 if all(r["ok"] for r in results) else 1


def _fetch(names: list[str]) -> int:
    for name in names or dataset_names():
        records = load_dataset(name)
        print(f"{name}: {len(records)} records")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        return _fetch(args.names)
    if args.action == "verify":
        return _verify(args.names, args.json)
    return _list(args.json)
