"""The dataset catalogue and file checks as text (what ``anydepth datasets`` prints)."""

from __future__ import annotations

from interp.data.registry import list_datasets

__all__ = ["dataset_table", "verification_lines"]


def dataset_table() -> list[str]:
    """One row per named dataset: name, rows, labels, whether it has responses, licence."""
    infos = list_datasets()
    rows = [(i.name, str(i.n_rows), "+".join(i.labels), "yes" if i.has_response else "no", i.license)
            for i in infos]
    header = ("name", "rows", "labels", "responses", "license")
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in [header, *rows]]


def verification_lines(results: list[dict]) -> list[str]:
    """Per dataset OK / FAIL with its record count, and each file's problem (missing, sha256, row count)."""
    lines = []
    for res in results:
        loaded = res["rows_loaded"]
        dropped = f", {res['rows_dropped']} dropped" if res["rows_dropped"] else ""
        lines.append(f"{'OK  ' if res['ok'] else 'FAIL'} {res['name']}: {loaded if loaded is not None else '-'}"
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
            lines.append(f"     {f['path']}: {problem}")
    return lines
