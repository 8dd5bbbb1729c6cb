"""The `edgegw` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from edgegw import __version__
from edgegw.config.issues import NOT_STARTED
from edgegw.errors import ConfigError, EdgeGwError
from edgegw.service.statedir import StateDirError

EX_CONFIG = 78  # sysexits.h: the unit has RestartPreventExitStatus=78, so a typo is no restart loop
# sysexits.h EX_CANTCREAT: the state directory is unusable or held by another gateway. Also in
# RestartPreventExitStatus=: restarting every 5 s cannot fix either.
EX_CANTCREAT = 73
DEFAULT_CONFIG = "/etc/edgegw/edgegw.yaml"


def _default_config() -> str:
    return os.environ.get("EDGEGW_CONFIG", DEFAULT_CONFIG)


def _add_config(parser: argparse.ArgumentParser) -> None:
    # One rule for every command: -c FILE, else $EDGEGW_CONFIG, else the file the unit uses.
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help=f"the gateway's YAML config file (default: $EDGEGW_CONFIG or {DEFAULT_CONFIG})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgegw",
        description="Shop-floor edge gateway: reads PLCs (Modbus TCP, OPC UA), keeps every "
        "value in a local SQLite outbox, and forwards it to an MQTT broker at least once.",
        epilog="Exit status: 0 ok, 1 runtime error, 73 state directory unusable or in use by "
        "another gateway, 78 invalid configuration.",
    )
    parser.add_argument("--version", action="version", version=f"edgegw {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )
    parser.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "text", "json"],
        help="auto: readable text on a terminal, JSON lines otherwise (journald)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the gateway until SIGTERM",
        description="Run the gateway: poll the sources, commit every value to the outbox, "
        "forward it to the broker. SIGTERM or Ctrl-C stops it cleanly: the sources stop, what "
        "was read is committed, in-flight publishes finish; unsent events wait on disk.",
    )
    _add_config(run)

    check = commands.add_parser(
        "check",
        help="validate a config file and exit",
        description="Validate a config file offline. Prints every problem as FILE:LINE:COL "
        "path: message and exits 78, or prints a summary and exits 0.",
    )
    _add_config(check)

    demo = commands.add_parser(
        "demo",
        help="two PLC simulators + broker + gateway; print what a subscriber receives",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run a small line on this machine and print every MQTT message a subscriber
receives:

  press-01  the Modbus TCP PLC simulator (simulators/modbus_plc.py): a press that
            cycles idle -> running -> done; the gateway polls its registers for the
            state, good and scrap counts, batch id and temperature.
  filler    the OPC UA PLC simulator (simulators/opcua_plc.py): a bottle filler;
            the server reports changes of its state, running flag, count and batch
            id to the gateway's subscription.
  broker    mosquitto if installed, else an embedded Python broker (MQTT 3.1.1).
  gateway   edgegw on edgegw/demo/demo.yaml, with the ports filled in and written
            as demo.yaml in the state directory.

Each message is printed as `mosquitto_sub -v` would: the topic, then the JSON
payload exactly as sent. Each business event (batch.completed, when the press
finishes a batch) also gets an EVENT line with its type, key and data.

Ctrl-C (or --duration) stops it and prints a summary: values and events
received, gaps in the seq numbers, quarantined records, and what to try next.""",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    demo.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "embedded"],
        default="auto",
        help="which broker to start (default: auto)",
    )
    demo.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="where the demo keeps its outbox and demo.yaml, which stay after it ends "
        "(default: a temporary directory, removed at the end)",
    )

    schema = commands.add_parser(
        "schema",
        help="print the JSON Schema of the config file, or of the messages",
        description="Print the JSON Schema of the config file, for editor completion "
        "(e.g. with the YAML language server: # yaml-language-server: $schema=edgegw.json). "
        "With --events -c FILE: the schemas of the messages instead (telemetry and event "
        "envelopes, and one per event type of that config), as the gateway publishes them.",
    )
    schema.add_argument(
        "--events", action="store_true", help="the message schemas of a config (needs -c)"
    )
    schema.add_argument("-c", "--config", metavar="FILE", help="the config, with --events")

    status = commands.add_parser(
        "status",
        help="the running gateway's sources, broker and outbox as a table",
        description="Ask the running gateway (its http.listen endpoint, /healthz) for the "
        "state of every source (up or down, reads and errors per second, availability, "
        "outages, MTTR, last error), the broker and the outbox. Exit status: 0 all up, "
        "1 something failing, 3 the gateway does not answer (the outbox file is read instead).",
    )
    _add_config(status)
    status.add_argument("--json", action="store_true", help="print /healthz's JSON as it is")

    outbox = commands.add_parser(
        "outbox", help="inspect the outbox", description="Inspect the outbox of a gateway."
    )
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    stats = outbox_commands.add_parser(
        "stats",
        help="depth, sequence range, oldest age, dropped events, file size",
        description="Print the outbox's depth, sequence range, age of the oldest event, "
        "events dropped by retention, and file size. Safe while the gateway runs.",
    )
    _add_config(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON object")

    quarantine = commands.add_parser(
        "quarantine",
        help="list, release or drop what failed a contract",
        description="List the records held in quarantine (values and events that broke a "
        "contract, with rule and reason), release a held event so it is published after all, "
        "or drop a record. Every release and drop is logged as an audit line. Safe while the "
        "gateway runs.",
    )
    quarantine.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=["list", "release", "drop"],
        help="list (default), release ID, drop ID",
    )
    quarantine.add_argument("id", nargs="?", help="record number (#) or message id")
    _add_config(quarantine)
    quarantine.add_argument("--json", action="store_true", help="one JSON object per line")
    quarantine.add_argument(
        "--since", metavar="WHEN", help="only records since a duration ago (2h) or an ISO time"
    )

    browse = commands.add_parser(
        "browse",
        help="list an OPC UA server's variables as a config 'tags:' fragment",
        description="Walk an OPC UA server's address space and print its variables as a YAML "
        "'tags:' list with nsu= node ids (stable across server restarts), ready to paste under "
        "a source. Without -c the connection is unsecured; with -c and --source it uses that "
        "source's security and credentials.",
    )
    browse.add_argument("url", nargs="?", help="opc.tcp://HOST:PORT/PATH (default: the source's)")
    browse.add_argument(
        "--depth", type=int, default=10, metavar="N", help="levels below the start (default: 10)"
    )
    browse.add_argument(
        "--under",
        default=None,
        metavar="NODE",
        help="start at this node, e.g. 'nsu=urn:plc;s=Filler' (default: the Objects folder)",
    )
    browse.add_argument(
        "--max-nodes",
        type=int,
        default=50_000,
        metavar="N",
        help="stop with an error beyond this many nodes (default: 50000)",
    )
    browse.add_argument("-c", "--config", metavar="FILE", help="take security from this config")
    browse.add_argument("--source", metavar="NAME", help="the OPC UA source in --config")

    pki = commands.add_parser(
        "pki",
        help="make the gateway's OPC UA certificate",
        description="Certificates for OPC UA security.",
    )
    pki_commands = pki.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    create = pki_commands.add_parser(
        "create",
        help="create a self-signed application certificate and key",
        description="Create the gateway's OPC UA application certificate (RSA 2048, SHA-256, "
        "application URI urn:edgegw:ID) as DIR/gw.der and its key as DIR/gw.key.pem (mode "
        "0600). Give gw.der to the PLC's administrator to trust; put the PLC's certificate in "
        "the source's 'trust:' list.",
    )
    create.add_argument("--out", required=True, metavar="DIR", help="directory for the files")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--gateway-id", metavar="ID", help="the gateway id (gateway.id in config)")
    who.add_argument("-c", "--config", metavar="FILE", help="take the gateway id from this config")
    create.add_argument("--hostname", default=None, help="DNS name in the certificate")
    create.add_argument("--days", type=int, default=3650, help="validity (default: 3650)")
    create.add_argument("--force", action="store_true", help="replace existing files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `quarantine release -c FILE 12`: argparse fills both optional positionals before the
    # options, so the record id after -c comes back unparsed; take it here.
    if args.command == "quarantine" and args.id is None and len(extra) == 1:
        args.id = extra.pop()
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "run":
        # A stop request while still starting (imports, reading the config) ends cleanly
        # with 0; run_gateway installs the real handlers before the outbox opens.
        signal.signal(signal.SIGTERM, _stop_before_start)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload before the start: no-op
    from edgegw.logs import setup_logging

    setup_logging(args.log_level, {"auto": None, "text": False, "json": True}[args.log_format])
    if getattr(args, "config", None) is None and args.command in _NEEDS_CONFIG:
        args.config = _default_config()
        if not os.path.exists(args.config):
            print(
                f"edgegw {args.command}: no config file given and none at {args.config}; "
                "give one with -c FILE (or set EDGEGW_CONFIG)",
                file=sys.stderr,
            )
            return EX_CONFIG
    try:
        if args.command == "schema":
            if args.events:
                if args.config is None:
                    raise EdgeGwError("schema --events needs -c FILE")
                return _message_schemas(_load(args.config))
            return _schema()
        if args.command == "demo":
            from edgegw.demo import run_demo

            return run_demo(duration=args.duration, broker=args.broker, state_dir=args.state_dir)
        if args.command == "browse":
            from edgegw.cli.browse import run_browse

            return run_browse(args)
        if args.command == "pki":
            return _pki_create(args)
        if args.command == "run":
            # The daemon parses its config in a child process: see edgegw/config/isolated.py.
            from edgegw.config.isolated import load_config_isolated

            config = load_config_isolated(args.config)
        else:
            config = _load(args.config)
        if args.command == "check":
            _check_broker_credentials(config)
            _check_state_dir(args.config, config)
            from edgegw.config.advice import config_warnings

            for warning in config_warnings(args.config, config):
                print(warning, file=sys.stderr)
            count = sum(len(source.tags) for source in config.data_sources())
            print(f"{args.config}: ok ({len(config.sources)} sources, {count} tags)")
            return 0
        if args.command == "run":
            from edgegw.service.app import run_gateway

            asyncio.run(run_gateway(config, args.config))
            return 0
        if args.command == "status":
            from edgegw.cli.status import run_status

            return run_status(config, args.config, as_json=args.json)
        if args.command == "outbox":
            return _outbox_stats(config, as_json=args.json)
        if args.command == "quarantine":
            return _quarantine(args, config.outbox_path)
    except ConfigError as exc:
        print("\n".join(exc.lines(_OUTCOME.get(args.command, NOT_STARTED))), file=sys.stderr)
        return EX_CONFIG
    except StateDirError as exc:
        print(f"edgegw {args.command}: {exc}", file=sys.stderr)
        return EX_CONFIG if args.command == "check" else EX_CANTCREAT
    except EdgeGwError as exc:
        print(f"edgegw {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # A task group's failure: a plain error of ours inside it is one line, not a traceback.
        if group.subgroup(EdgeGwError) is not group:
            raise
        for leaf in _leaves(group):
            print(f"edgegw {args.command}: {leaf}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command}")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


_NEEDS_CONFIG = {"run", "check", "status", "outbox", "quarantine"}
_OUTCOME = {
    "check": "the config is not valid.",
    "status": "edgegw status needs a valid config to find the gateway.",
    "outbox": "edgegw outbox needs a valid config to find the outbox.",
    "quarantine": "edgegw quarantine needs a valid config to find the outbox.",
}
"""What the summary line of a config error says did not happen: only `run` starts a gateway."""


def _check_state_dir(path: str, config: Any) -> None:
    """`check` says what `run` would find: a state directory it cannot write."""
    from edgegw.config.issues import ConfigIssue
    from edgegw.config.yamlpos import load_yaml_file
    from edgegw.service.statedir import check_problem

    directories = [("gateway.state_dir", ("gateway", "state_dir"), config.gateway.state_dir)]
    if config.outbox.path is not None:
        outbox_dir = os.path.dirname(os.path.abspath(config.outbox_path))
        directories.append(("outbox.path", ("outbox", "path"), outbox_dir))
    issues = []
    for name, loc, directory in directories:
        problem = check_problem(directory)
        if problem is not None:
            mark = load_yaml_file(path).value_marks.get(loc)
            issues.append(ConfigIssue(path, mark, name, problem))
    if issues:
        raise ConfigError(issues)


def _check_broker_credentials(config: Any) -> None:
    """What the model cannot see: the password file is text, the TLS files load together."""
    from edgegw.errors import SinkError
    from edgegw.sinks.mqtt.configure import mqtt_settings
    from edgegw.sinks.mqtt.tls import tls_context

    settings = mqtt_settings(config)  # reads the password file
    if settings.tls is not None:
        try:
            tls_context(settings.tls)
        except SinkError as exc:
            raise EdgeGwError(f"mqtt.tls: {exc}") from None


def _stop_before_start(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _quarantine(args: argparse.Namespace, path: str) -> int:
    from edgegw.cli import quarantine as quarantine_cli

    if args.action == "list":
        return quarantine_cli.list_records(path, since=args.since, as_json=args.json)
    if args.id is None:
        raise EdgeGwError(f"quarantine {args.action} needs the record's number or id")
    if args.action == "release":
        return quarantine_cli.release(path, args.id)
    return quarantine_cli.drop(path, args.id)


def _pki_create(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgegw.sources.opcua.pki import create_application_certificate

    gateway_id = args.gateway_id or _load(args.config).gateway.id
    paths = create_application_certificate(
        Path(args.out),
        gateway_id=gateway_id,
        hostname=args.hostname,
        days=args.days,
        force=args.force,
    )
    print(f"certificate {paths.certificate}")
    print(f"private key {paths.private_key}")
    return 0


def _load(path: str):  # type: ignore[no-untyped-def]
    from edgegw.config.loader import load_config

    return load_config(path)


def _schema() -> int:
    from edgegw.config.model import GatewayConfig

    schema = GatewayConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edgegw configuration"
    sys.stdout.write(orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _message_schemas(config: Any) -> int:
    from edgegw.pipeline.events.schemas import all_schemas

    sys.stdout.write(orjson.dumps(all_schemas(config), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _outbox_stats(config: Any, *, as_json: bool) -> int:
    from edgegw.cli.status import backlog_line
    from edgegw.outbox.store import read_stats

    stats = read_stats(config.outbox_path, config.sink_selectors()).as_dict()
    if as_json:
        sys.stdout.write(orjson.dumps(stats).decode() + "\n")
        return 0
    age = stats["oldest_age_seconds"]
    print(f"outbox      {stats['path']}")
    print(f"depth       {stats['depth']} events waiting for a sink")
    for name, backlog in stats["sinks"].items():
        print(f"sink        {name}: {backlog_line(backlog)}")
    waiting = "none waiting" if stats["first_seq"] is None else f"first {stats['first_seq']}"
    print(f"seq         {waiting}, last assigned {stats['last_seq']}")
    print(f"oldest      {'-' if age is None else f'{age:.1f} s ago'}")
    print(f"dropped     {stats['dropped']} events by retention")
    print(f"quarantine  {stats['quarantined']} records (edgegw quarantine -c FILE)")
    print(f"file        {stats['file_bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
