"""`edgegw browse`: connect like a source would, walk the address space, print tags YAML."""

from __future__ import annotations

import argparse
import asyncio
import sys

from edgegw.errors import EdgeGwError
from edgegw.sources.opcua.config import OpcUaSourceConfig
from edgegw.sources.opcua.session import SessionFactory, close_quietly, describe_error


def _source_config(args: argparse.Namespace) -> OpcUaSourceConfig:
    if args.config is None:
        if args.url is None:
            raise EdgeGwError("give a URL (opc.tcp://HOST:PORT/PATH) or -c FILE --source NAME")
        return OpcUaSourceConfig.model_validate(
            {
                "name": "browse",
                "protocol": "opcua",
                "url": args.url,
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
        raise EdgeGwError(f"name one OPC UA source of {args.config} with --source ({names})")
    source = sources[0]
    if args.url is not None:
        source = source.model_copy(update={"url": args.url})
    return source


async def _browse(args: argparse.Namespace) -> str:
    from edgegw.sources.opcua.browse import browse_variables, render_tags_yaml

    source = _source_config(args)
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
    text = asyncio.run(_browse(args))
    sys.stdout.write(text)
    return 0
