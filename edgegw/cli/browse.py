"""`edgegw browse`: connect like a source would, walk the address space, print tags YAML."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

from pydantic import TypeAdapter, ValidationError

from edgegw.errors import EdgeGwError
from edgegw.sources.opcua.config import OpcUaSourceConfig, OpcUaUrl
from edgegw.sources.opcua.session import SessionFactory, close_quietly, describe_error

EX_USAGE = 2  # what argparse exits with for a bad argument: a mistyped URL is one too
URL_FORM = "opc.tcp://HOST[:PORT][/PATH]"

_URL = TypeAdapter(OpcUaUrl)
# What people type for opc.tcp:// : 'opc.tcp//', 'opc.tcp:/', 'opc.tcp:', 'opc-tcp://', 'opctcp://'.
_OPC_TCP_MISSPELT = re.compile(r"^opc[._-]?tcp(?::?[/\\]{1,2}|:)", re.IGNORECASE)
# Another scheme, even with a broken separator: 'http://', 'https:/', 'tcp//'.
_OTHER_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*(?::[/\\]{1,2}|[/\\]{2})")


class BrowseUsageError(EdgeGwError):
    """The command line cannot work as given; the message says what would."""


def _url_problem(url: str) -> str | None:
    """Why `url` is not an OPC UA endpoint address, in words, or None when it is one."""
    try:
        _URL.validate_python(url)
    except ValidationError as exc:
        error = exc.errors()[0]
        return str(error.get("ctx", {}).get("error", error["msg"]))
    return None


def _guess_endpoint(url: str) -> str | None:
    """The opc.tcp:// address `url` was probably meant to be, if there is a valid one."""
    if "://" in url and url.split("://", 1)[0].lower() == "opc.tcp":
        return None  # the scheme is right; what is wrong is after it, the message says what
    for prefix in (_OPC_TCP_MISSPELT, _OTHER_SCHEME):
        match = prefix.match(url)
        if match:
            rest = url[match.end() :]
            break
    else:
        rest = url  # a bare HOST:PORT
    guess = f"opc.tcp://{rest}"
    return guess if rest and _url_problem(guess) is None else None


def check_url(url: str) -> str:
    """`url` when it is an OPC UA endpoint address, else BrowseUsageError saying what is."""
    if not url.strip():
        raise BrowseUsageError(f"the URL is empty; write {URL_FORM}")
    problem = _url_problem(url)
    if problem is None:
        return url
    if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
        # Not echoed: the text before '@' may be a password.
        raise BrowseUsageError(
            "credentials do not belong in the URL; put 'username' and 'password_file' in the "
            "source of a config and give -c FILE --source NAME"
        )
    guess = _guess_endpoint(url)
    if guess is not None:
        raise BrowseUsageError(
            f"URL '{url}' is not an OPC UA endpoint address; write {URL_FORM} "
            f"(did you mean '{guess}'?)"
        )
    # The validator's own words: no host, a port that is not 1..65535.
    raise BrowseUsageError(f"URL {problem}" if problem.startswith("'") else f"URL: {problem}")


def _source_config(args: argparse.Namespace) -> OpcUaSourceConfig:
    url = None if args.url is None else check_url(args.url)
    if args.config is None:
        if url is None:
            raise BrowseUsageError(
                f"give the server's URL ({URL_FORM}) or a config and its source "
                "(-c FILE --source NAME)"
            )
        return OpcUaSourceConfig.model_validate(
            {
                "name": "browse",
                "protocol": "opcua",
                "url": url,
                "security": "none",
                "tags": [{"name": "unused", "node": "i=2258"}],
            }
        )
    from edgegw.config.loader import load_config

    config = load_config(args.config)
    sources = [s for s in config.sources if isinstance(s, OpcUaSourceConfig)]
    if args.source is not None:
        sources = [s for s in sources if s.name == args.source]
    if len(sources) != 1:
        names = ", ".join(s.name for s in config.sources if isinstance(s, OpcUaSourceConfig))
        raise BrowseUsageError(
            f"name one OPC UA source of {args.config} with --source ({names or 'it has none'})"
        )
    source = sources[0]
    if url is not None:
        source = source.model_copy(update={"url": url})
    return source


async def _browse(args: argparse.Namespace, source: OpcUaSourceConfig) -> str:
    from edgegw.sources.opcua.browse import browse_variables, render_tags_yaml

    try:
        client = await SessionFactory(source, client_name="edgegw-browse").connect()
    except EdgeGwError:
        raise
    except Exception as exc:
        raise EdgeGwError(f"cannot connect to {source.url}: {describe_error(exc)}") from None
    try:
        variables = await browse_variables(
            client, start=args.under, max_depth=args.depth, max_nodes=args.max_nodes
        )
    finally:
        await close_quietly(client)
    return render_tags_yaml(variables)


def run_browse(args: argparse.Namespace) -> int:
    try:
        source = _source_config(args)
    except BrowseUsageError as exc:
        # One line, and argparse's exit status for a command line that cannot work.
        print(f"edgegw browse: {exc}", file=sys.stderr)
        return EX_USAGE
    text = asyncio.run(_browse(args, source))
    sys.stdout.write(text)
    return 0
