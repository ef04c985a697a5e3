"""The model catalogue and a verification as text (what ``anydepth models`` prints)."""

from __future__ import annotations

__all__ = ["catalogue_table", "verification_line"]


def catalogue_table(rows: list[dict], cache: str) -> list[str]:
    """One row per catalogue model: name (``*`` = the embedded default), size, whether it is cached, sha256."""
    headers = ("name", "aliases", "params", "layers", "d_model", "cached", "sha256")
    cells = [(r["name"] + (" *" if r["default"] else ""), r["aliases"], r["params"], str(r["layers"]),
              str(r["d_model"]), "converted" if r["converted"] else ("gguf" if r["gguf"] else "no"),
              r["sha256"][:16] + "…") for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in (headers, *cells)]
    return [*lines, f"(* = embedded default; cache: {cache})"]


def verification_line(record: dict) -> str:
    """What :func:`interp.model.loading.verify_catalogue` found and how long each step took."""
    return (f"{record['name']}: sha256 OK {record['sha256']} ({record['gguf_bytes']:,} bytes); "
            f"assemble {record['assemble_s']} s, hash {record['hash_s']} s, "
            f"convert {record['convert_s']} s{' (already cached)' if record['was_converted'] else ''}, "
            f"load from cache {record['load_s']} s; {record['n_layers']} layers, d_model {record['d_model']}")
