"""`harmonet token create`, `harmonet registry import-clinical FILE` and
`harmonet registry migrate`. Only argument parsing is imported eagerly."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(verbs: Any, service_parsers: dict[str, argparse.ArgumentParser]) -> None:
    token = verbs.add_parser("token", help="registry API tokens")
    token_actions = token.add_subparsers(metavar="ACTION")
    create = token_actions.add_parser("create", help="print a new API token (shown once)")
    create.add_argument("--site", action="append", required=True,
                        help="site the token may read (repeatable; '*' for every site)")
    create.add_argument("--role", required=True, choices=("viewer", "site-manager", "admin"))
    create.add_argument("--name", help="who or what the token is for (audit log)")
    create.set_defaults(handler=_create_token)
    listing = token_actions.add_parser("list", help="tokens (ids, roles, sites; never secrets)")
    listing.set_defaults(handler=_list_tokens)
    revoke = token_actions.add_parser("revoke", help="revoke a token by id (within 10 s)")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(handler=_revoke_token)

    actions = service_parsers["registry"].add_subparsers(metavar="ACTION")
    clinical = actions.add_parser("import-clinical",
                                  help="import subject variables from a CSV (all or nothing)")
    clinical.add_argument("file", type=Path)
    clinical.add_argument("--dictionary", type=Path,
                          help="data dictionary (YAML or CSV); default: the stored one, "
                               "else HARMONET_CLINICAL_DICTIONARY")
    clinical.set_defaults(handler=_import_clinical)
    migrate = actions.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(handler=_migrate)


def _sessions() -> Any:
    from registry.db import database_url, make_engine, migrate, session_factory
    from services.settings import Settings

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(database_url(settings))
    migrate(engine)
    return settings, session_factory(engine)


def _create_token(args: argparse.Namespace) -> int:
    from registry.auth import create_token

    _, sessions = _sessions()
    try:
        with sessions.begin() as session:
            token = create_token(session, sites=args.site, role=args.role, name=args.name)
    except ValueError as exc:
        print(f"harmonet token create: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _list_tokens(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from registry.models import ApiToken

    _, sessions = _sessions()
    with sessions() as session:
        for row in session.scalars(select(ApiToken).order_by(ApiToken.id)):
            state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
            print(f"{row.id}\t{row.role}\t{','.join(row.sites)}\t{row.name or ''}\t{state}")
    return 0


def _revoke_token(args: argparse.Namespace) -> int:
    from registry.models import ApiToken, utcnow

    _, sessions = _sessions()
    with sessions.begin() as session:
        row = session.get(ApiToken, args.id)
        if row is None:
            print(f"no token {args.id}", file=sys.stderr)
            return 1
        row.revoked_at = row.revoked_at or utcnow()
    print(f"token {args.id} revoked")
    return 0


def _import_clinical(args: argparse.Namespace) -> int:
    from registry.clinical import (
        DictionaryError,
        import_clinical,
        load_stored_dictionary,
        parse_dictionary,
    )

    settings, sessions = _sessions()
    try:
        text = args.file.read_text(encoding="utf-8")
        with sessions() as session:
            dictionary_file = args.dictionary or None
            if dictionary_file is not None:
                variables = parse_dictionary(dictionary_file.read_text(encoding="utf-8"))
            else:
                variables = load_stored_dictionary(session)
                if not variables and settings.clinical_dictionary is not None:
                    variables = parse_dictionary(
                        settings.clinical_dictionary.read_text(encoding="utf-8"))
            if not variables:
                print("no data dictionary: pass --dictionary or set "
                      "HARMONET_CLINICAL_DICTIONARY", file=sys.stderr)
                return 2
            result = import_clinical(session, text, variables, allowed_sites=None)
            if result.errors:
                session.rollback()
                for error in result.errors:
                    print(f"{args.file}:{error.row}: {error.column}: {error.message}",
                          file=sys.stderr)
                print(f"{len(result.errors)} error(s); nothing imported", file=sys.stderr)
                return 1
            session.commit()
    except (OSError, UnicodeDecodeError, DictionaryError) as exc:
        print(f"harmonet registry import-clinical: {exc}", file=sys.stderr)
        return 2
    print(f"imported {result.values} values for {result.subjects} subjects")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    _sessions()
    print("registry schema up to date")
    return 0
