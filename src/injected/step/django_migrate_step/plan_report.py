"""The plan as people read it in the step's log: a verdict line, the database and the
settings, one row per pending migration with what the settings do with it, then every
finding in full and the data migrations to review by hand. (`django-migrate-webhook
plan` prints the same report from its JSON, as a table or as Markdown.)"""

from .summary import shorten

# Widest cell of the table's OPERATIONS column before it is cut.
CELL_MAX_CHARS = 60


def size(finding):
    """`~200,000 rows, 12.3 MiB` of a locking finding's table; empty when unknown."""
    parts = []
    if finding.get("rows") is not None:
        parts.append("~{:,} rows".format(finding["rows"]))
    if finding.get("bytes") is not None:
        n = float(finding["bytes"])
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if n < 1024 or unit == "TiB":
                parts.append("%d B" % n if unit == "B" else "%.1f %s" % (n, unit))
                break
            n /= 1024.0
    return ", ".join(parts)


def short_finding(f):
    """A finding in one cell: the kind and, for a locking one, the lock, table and size."""
    if f["kind"] == "locking":
        text = "locking: %s on %s" % (f.get("lock") or "a lock", f.get("table") or "?")
        sized = size(f)
        return text + (" (%s)" % sized if sized else "")
    return "breaking"


def columns(rows):
    """Rows of cells as aligned text (two spaces between columns)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in rows)


def table(plan):
    """The report as text."""
    out = ["PLAN  %s: %s\n" % (plan["verdict"], plan["message"])]
    db = plan["database"]
    out.append(
        "DATABASE  %s %s (alias %s)%s\n"
        % (db["server"], db["version"] or "", db["alias"], ", a first install" if plan["first_install"] else "")
    )
    s = plan["settings"]
    out.append(
        "SETTINGS  unsafe-migrations: %s, hold-back: %s, locking-min-rows: %d%s%s\n"
        % (
            s["unsafe_migrations"],
            ",".join(s["hold_back"]),
            s["locking_min_rows"],
            ", allow-unsafe: %s" % ",".join(s["allow_unsafe"]) if s["allow_unsafe"] else "",
            ", defer: %s" % ",".join(s["defer"]) if s["defer"] else "",
        )
    )
    if not plan["migrations"]:
        return "".join(out)
    rows = [("MIGRATION", "ACTION", "OPERATIONS", "FINDINGS")]
    for m in plan["migrations"]:
        findings = [f for o in m["operations"] for f in o["findings"]]
        ops = ", ".join(o["operation"].split("(", 1)[0] for o in m["operations"]) or "none"
        rows.append(
            (
                m["migration"],
                m["action"],
                shorten(ops, CELL_MAX_CHARS),
                "; ".join(short_finding(f) for f in findings) or "-",
            )
        )
    out.append("\n" + columns(rows))
    lines = []
    for m in plan["migrations"]:
        for o in m["operations"]:
            if o["findings"]:
                lines.append("  %s %s\n" % (m["migration"], o["operation"]))
            for f in o["findings"]:
                said = " (held back)" if f["held_back"] else " (allowed)" if f["allowed"] else ""
                lines.append("    %s%s: %s\n" % (f["kind"], said, f["why"]))
    if lines:
        out.append("\nFINDINGS\n" + "".join(lines))
    data = [
        "  %s %s\n" % (m["migration"], o["operation"]) for m in plan["migrations"] for o in m["operations"] if o["data"]
    ]
    if data:
        out.append("\nDATA MIGRATIONS (cannot be checked; review by hand)\n" + "".join(data))
    # A held-back migration's why is its finding, listed above.
    why = [
        "  %s: %s: %s\n" % (m["migration"], m["action"], m["why"])
        for m in plan["migrations"]
        if m["why"] and m["action"] != "hold-back"
    ]
    if why:
        out.append("\nWHY\n" + "".join(why))
    return "".join(out)
