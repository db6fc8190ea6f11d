"""What the classifier reads of the migration state: a field's column type and the rules of
type changes (which widen, which rewrite the table), database defaults, table names, the
fields of a model before an operation and its uniqueness rules."""


def field_type(field, connection, state):
    """The column type of a field of the migration state. A foreign key's is its target's
    primary key type, looked up in the state (its target is not resolved there)."""
    if field.is_relation and not field.many_to_many:
        target = related_model(field)
        app_label, _, model = target.rpartition(".")
        try:
            target_state = state.models[app_label, model]
        except KeyError:
            return "relation to %s" % target
        for pk in target_state.fields.values():
            if getattr(pk, "primary_key", False):
                return field_type(pk, connection, state)
        return "relation to %s" % target
    try:
        return field.db_type(connection)
    except Exception:  # noqa: BLE001 - fields that need their model to answer
        return field.deconstruct()[1]


def related_model(field):
    """`app_label.model` of a relation's target, lower case, else None."""
    if not field.is_relation:
        return None
    model = field.remote_field.model
    if not isinstance(model, str):
        model = model._meta.label
    return model.lower()


INTEGER_RANKS = {"smallint": 1, "integer": 2, "int": 2, "bigint": 3, "serial": 2, "bigserial": 3}


def parse_type(db_type):
    """(base, size, signed) of a column type as Django writes it, e.g. `varchar(200)` ->
    ('varchar', 200, True), `integer UNSIGNED AUTO_INCREMENT` -> ('integer', None, False)."""
    text = str(db_type or "").strip().lower()
    words = text.replace("(", " (").split()
    base = words[0] if words else ""
    size = None
    if "(" in text and ")" in text:
        inside = text[text.index("(") + 1 : text.index(")")].split(",")
        try:
            size = tuple(int(x) for x in inside)
        except ValueError:
            size = None
    return base, size, "unsigned" not in text


def widens(old_type, new_type):
    """True when every value of the old column type fits the new one unchanged: a longer
    varchar, varchar to text, a larger integer, more digits before the decimal point."""
    (ob, osize, osigned), (nb, nsize, nsigned) = parse_type(old_type), parse_type(new_type)
    if ob == "varchar" and nb == "varchar" and osize and nsize:
        return nsize[0] >= osize[0]
    if ob == "varchar" and nb in ("text", "longtext", "mediumtext"):
        return True
    if ob in INTEGER_RANKS and nb in INTEGER_RANKS:
        return INTEGER_RANKS[nb] >= INTEGER_RANKS[ob] and (nsigned or not osigned)
    if ob in ("numeric", "decimal") and nb in ("numeric", "decimal") and osize and nsize and len(osize) == 2:
        return len(nsize) == 2 and nsize[1] == osize[1] and nsize[0] >= osize[0]
    return False


def rewrites_in_place(old_type, new_type, vendor):
    """True when the type change needs no table rewrite: PostgreSQL's binary-coercible
    changes (a longer varchar, varchar to text, more digits of a numeric with the same
    scale); MySQL/MariaDB's in-place varchar extension within the same length-byte size
    (up to 255 bytes, or above, at 4 bytes a character)."""
    (ob, osize, _), (nb, nsize, _) = parse_type(old_type), parse_type(new_type)
    if ob == "varchar" and nb == "varchar" and osize and nsize and nsize[0] >= osize[0]:
        return vendor == "postgresql" or (osize[0] * 4 > 255) == (nsize[0] * 4 > 255)
    if vendor == "postgresql" and ob == nb == "numeric" and osize and nsize and len(osize) == len(nsize) == 2:
        return nsize[1] == osize[1] and nsize[0] >= osize[0]
    return vendor == "postgresql" and ob == "varchar" and nb == "text"


def no_default(field):
    """True when the column has no database default: no `db_default`, or `db_default=None`
    (DEFAULT NULL)."""
    from django.db import models

    db_default = getattr(field, "db_default", models.NOT_PROVIDED)
    if db_default is models.NOT_PROVIDED or db_default is None:
        return True
    return getattr(db_default, "value", object()) is None


def no_default_given(field):
    """True when the field sets no `db_default` at all (as opposed to `db_default=None`)."""
    from django.db import models

    return getattr(field, "db_default", models.NOT_PROVIDED) is models.NOT_PROVIDED


def mentions_default(op, model_name, field_name, table, column):
    """True when `op`, later in the same migration, gives the column a database default:
    RunSQL with SET DEFAULT for it, django-add-default-value's AddDefaultValue, or an
    AlterField that adds a `db_default`."""
    from django.db.migrations import operations as ops

    if op.__class__.__name__ == "AddDefaultValue":
        return getattr(op, "model_name", "").lower() == model_name and getattr(op, "name", None) == field_name
    if isinstance(op, ops.AlterField):
        return op.model_name_lower == model_name and op.name == field_name and not no_default(op.field)
    if isinstance(op, ops.RunSQL):
        sql = op.sql if isinstance(op.sql, (list, tuple)) else [op.sql]
        text = " ".join(str(s[0] if isinstance(s, (list, tuple)) else s) for s in sql).lower()
        return "set default" in text and column.lower() in text and table.lower() in text
    return False


def db_table(state, app_label, model_name):
    try:
        model = state.models[app_label, model_name]
    except KeyError:
        return "%s_%s" % (app_label, model_name)
    return model.options.get("db_table") or "%s_%s" % (app_label, model_name)


def old_field(state, app_label, model_name, name):
    try:
        return state.models[app_label, model_name].fields[name]
    except KeyError:
        return None


def unique_sets(state, app_label, model_name):
    try:
        together = state.models[app_label, model_name].options.get("unique_together") or ()
    except KeyError:
        return set()
    return {tuple(sorted(t)) for t in together}


def existing_unique_sets(state, app_label, model_name):
    """The field sets the model is unique on before the operation: unique_together, unique
    fields, and unique constraints without a condition or expressions."""
    try:
        model = state.models[app_label, model_name]
    except KeyError:
        return set()
    from django.db.models import UniqueConstraint

    sets = unique_sets(state, app_label, model_name)
    sets.update((name,) for name, field in model.fields.items() if field.unique and not field.primary_key)
    for constraint in model.options.get("constraints") or ():
        if (
            isinstance(constraint, UniqueConstraint)
            and constraint.fields
            and constraint.condition is None
            and not constraint.expressions
        ):
            sets.add(tuple(sorted(constraint.fields)))
    return sets


def unique_rule_harmless(fields, app_label, model_name, state, added, nulls_distinct=None):
    """True when a uniqueness rule on `fields` cannot fail a write of the previous release:
    it includes a nullable column added by the pending plan (the previous release leaves
    it NULL, and NULLs never repeat under a rule whose NULLs are distinct), or it is
    weaker than a rule the model already has (a set of columns that contains one it is
    unique on: a repeat of the wider set repeats the narrower one, which already failed)."""
    fields = set(fields)
    if not fields:
        return False
    if nulls_distinct is not False:
        for name in fields:
            field = old_field(state, app_label, model_name, name)
            if (app_label, model_name, name.lower()) in added and field is not None and field.null:
                return True
    return any(set(existing) <= fields for existing in existing_unique_sets(state, app_label, model_name))
