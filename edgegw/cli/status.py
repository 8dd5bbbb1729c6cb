"""`edgegw status`: the running gateway's state as a table, read from its /healthz endpoint."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from typing import Any

import orjson

from edgegw.config.model import GatewayConfig
from edgegw.service.statedir import running_endpoint

EXIT_OK = 0
EXIT_FAILING = 1  # running, but a source, the broker or the outbox is failing
EXIT_NOT_RUNNING = 3  # as `systemctl status`: the gateway does not answer


def run_status(config: GatewayConfig, config_path: str, *, as_json: bool) -> int:
    # The running gateway wrote where it listens beside its PID: after a refused reload the
    # file may name another port than the one it serves.
    endpoint = running_endpoint(config.gateway.state_dir)
    if endpoint is None and config.http is not None:
        host = config.http.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        endpoint = f"http://{host}:{config.http.port}"
    if endpoint is None:
        print(
            f"edgegw status reads the running gateway's HTTP endpoint; {config_path} has no "
            "'http: {listen: 127.0.0.1:9108}'",
            file=sys.stderr,
        )
        return _offline(config)
    url = f"{endpoint}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except urllib.error.HTTPError as error:  # 503: running, something failing
        body = error.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"edgegw is not answering on {url}: {reason}", file=sys.stderr)
        return _offline(config)
    state = orjson.loads(body)
    if as_json:
        sys.stdout.write(orjson.dumps(state).decode() + "\n")
    else:
        sys.stdout.write(render_status(state))
    return EXIT_OK if state.get("status") == "ok" else EXIT_FAILING


def _offline(config: GatewayConfig) -> int:
    """What the outbox file says when the daemon cannot be asked."""
    from edgegw.errors import OutboxError
    from edgegw.outbox.store import read_stats

    try:
        stats = read_stats(config.outbox_path, config.sink_selectors()).as_dict()
    except OutboxError as exc:
        print(f"outbox: {exc}", file=sys.stderr)
    else:
        age = stats["oldest_age_seconds"]
        print(
            f"outbox {stats['path']}: {stats['depth']} events waiting, oldest "
            f"{'-' if age is None else _duration(age)}"
        )
    return EXIT_NOT_RUNNING


def render_status(state: dict[str, Any]) -> str:
    broker = state["broker"]
    outbox = state["outbox"]
    oldest = outbox["oldest_age_seconds"]
    lines = [
        f"edgegw {state['version']}  gateway {state['gateway']}  up "
        f"{_duration(state['uptime_seconds'])}  status {state['status'].upper()}",
        "",
        f"broker   {broker['address']}  {'up' if broker['up'] else 'DOWN'}  "
        f"{broker['published']} published ({broker['published_per_second']:g}/s)  "
        f"{broker['connects']} connects",
        f"outbox   {outbox['depth']} waiting, oldest "
        f"{'-' if oldest is None else _duration(oldest)}"
        f", {outbox['committed']} committed ({outbox['committed_per_second']:g}/s), "
        f"{outbox['dropped']} dropped, {outbox['quarantined']} quarantined",
    ]
    sinks = state.get("sinks", {})
    for name, sink in sinks.items() if len(sinks) > 1 else ():
        lines.insert(
            -1,
            f"sink     {name}  {sink['address']}  {'up' if sink['up'] else 'DOWN'}  "
            f"{sink['published']} published  {sink['refused']} refused  "
            f"{sink['connects']} connects  {backlog_line(sink)}",
        )
    if outbox["alarm"]:
        lines.append(f"         ALARM {outbox['alarm']}")
    if broker["last_error"] and not broker["up"]:
        lines.append(f"         broker: {broker['last_error']}")
    rows = [("SOURCE", "STATE", "READS/S", "ERRORS/S", "AVAIL", "OUTAGES", "MTTR", "LAST ERROR")]
    for name, source in state["sources"].items():
        down = source["down_for_seconds"]
        bad_tags = source.get("bad_tags", {})
        shown = "up" if source["up"] else f"DOWN {_duration(down)}" if down else "DOWN"
        if source["up"] and bad_tags:
            shown = f"up, {len(bad_tags)} BAD TAG{'S' * (len(bad_tags) > 1)}"
        mttr = source["mttr_seconds"]
        rows.append(
            (
                name,
                shown,
                f"{source['reads_per_second']:g}",
                f"{source['errors_per_second']:g}",
                f"{100 * source['availability']:.1f}%",
                str(source["outages"]),
                "-" if mttr is None else _duration(mttr),
                source["last_error"] or "-",
            )
        )
        rows.extend(
            (f"  tag {tag}", "BAD", "", "", "", "", "", why) for tag, why in bad_tags.items()
        )
        for device_name, device in source.get("devices", {}).items():
            errors = sum(device["errors"].values())
            rows.append(
                (
                    f"  {device_name}",
                    f"unit {device['unit']}" + (" BREAKER OPEN" if device["breaker_open"] else ""),
                    f"{device['reads']} reads",
                    f"{errors} errors",
                    f"{1000 * device['response_seconds']:.0f} ms",
                    "",
                    "",
                    device["last_error"] or "-",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines.append("")
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    if state["failing"]:
        lines.append("")
        lines.extend(f"failing: {part}" for part in state["failing"])
    return "\n".join(lines) + "\n"


def backlog_line(sink: dict[str, Any]) -> str:
    """`N waiting, oldest AGE` of a sink in a health document or in outbox stats."""
    waiting = sink.get("waiting")
    if waiting is None:  # a gateway of an older version
        return ""
    oldest = sink.get("oldest_age_seconds")
    return f"{waiting} waiting" + ("" if oldest is None else f", oldest {_duration(oldest)}")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"
